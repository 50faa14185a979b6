"""The client library: `Client` (blocking, thread-safe) and `AsyncClient` (asyncio).

`Client` gives each calling thread its own DEALER socket (ZeroMQ sockets are not thread-safe),
so many threads share one Client with no extra thread hop on the request path. Pipelining:
`submit()` sends and returns a `Pending`; `result()` collects it (on the same thread).
Output arrays are read-only views of the received message (zero-copy): `.copy()` to modify.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Mapping

import numpy as np
import zmq
import zmq.asyncio

from edgesched.config import default_endpoint
from edgesched.errors import InvalidInput, ServerUnavailable, error_from_code
from edgesched.serve import wire
from edgesched.types import Priority

_ids = itertools.count(1)       # process-wide, so ids never repeat across sockets


def _infer_header(model: str, deadline_ms: float | None, priority) -> dict:
    header = {"model": model}
    if deadline_ms is not None:
        header["deadline_ms"] = float(deadline_ms)
    if priority is not None:
        try:
            header["priority"] = Priority(priority).value
        except ValueError:
            raise InvalidInput(f"priority {priority!r} is not realtime or best_effort") from None
    return header


def _check_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of name -> numpy array")
    return {name: np.asarray(a) for name, a in inputs.items()}


def _result(msg: wire.Message):
    """A reply's value, or raise the typed error it carries."""
    if msg.kind == wire.ERROR:
        raise error_from_code(str(msg.header.get("code")), str(msg.header.get("message")))
    if msg.kind == wire.INFER:
        return msg.tensors
    return msg.header


def _new_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class Pending:
    """A request in flight on one client thread. After `result()`, `timings` holds the
    server's view of an INFER request: queue_ms, device_ms, total_ms (arrival -> done)."""

    def __init__(self, client: "Client", request_id: int, timeout_s: float):
        self._client, self.id = client, request_id
        self._give_up_s = time.monotonic() + timeout_s
        self._thread = threading.get_ident()
        self.timings: dict | None = None

    def result(self):
        if threading.get_ident() != self._thread:
            raise RuntimeError("collect a Pending on the thread that submitted it")
        msg = self._client._wait(self.id, self._give_up_s)
        self.timings = msg.header.get("timings")
        return _result(msg)


class Client:
    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0):
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._tls = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
        self._ctx.term()

    # --- the API ------------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None,
              priority: Priority | str | None = None) -> dict[str, np.ndarray]:
        return self.submit(model, inputs, deadline_ms, priority).result()

    def submit(self, model: str, inputs: Mapping[str, np.ndarray],
               deadline_ms: float | None = None, priority: Priority | str | None = None) -> Pending:
        header = _infer_header(model, deadline_ms, priority)
        return self._send(wire.INFER, header, _check_inputs(inputs))

    def models(self) -> list[dict]:
        return self._send(wire.MODELS, {}).result()["models"]

    def stats(self) -> dict:
        return self._send(wire.STATS, {}).result()

    def ping(self) -> float:
        """Round-trip time to the server in seconds."""
        start = time.perf_counter()
        self._send(wire.PING, {}).result()
        return time.perf_counter() - start

    # --- per-thread socket --------------------------------------------------------------------
    def _state(self):
        tls = self._tls
        if getattr(tls, "sock", None) is None:
            with self._lock:
                if self._closed:
                    raise ServerUnavailable("the client is closed")
                tls.sock = _new_socket(self._ctx, self.endpoint)
                self._sockets.append(tls.sock)
            tls.stash = {}
        return tls

    def _send(self, kind: bytes, header: dict, tensors=None) -> Pending:
        request_id = next(_ids)
        frames = wire.encode(kind, {"id": request_id, **header}, tensors)
        self._state().sock.send_multipart(frames, copy=False)
        return Pending(self, request_id, self.timeout_s)

    def _wait(self, request_id: int, give_up_s: float):
        tls = self._state()
        while request_id not in tls.stash:
            left_ms = (give_up_s - time.monotonic()) * 1e3
            if left_ms <= 0 or not tls.sock.poll(max(int(left_ms), 1)):
                if time.monotonic() >= give_up_s:
                    self._reset(tls)
                    raise ServerUnavailable(f"no reply from {self.endpoint} within "
                                            f"{self.timeout_s:g} s")
                continue
            try:
                msg = wire.decode_reply([f.buffer for f in tls.sock.recv_multipart(copy=False)])
            except InvalidInput:
                continue      # not a reply we can read: whoever waits for it times out
            if msg.id is not None:    # None: an error about a request the server could not read
                tls.stash[msg.id] = msg
        return tls.stash.pop(request_id)

    def _reset(self, tls) -> None:
        """Drop a socket that timed out: its queued requests and late replies go with it."""
        with self._lock:
            if tls.sock in self._sockets:
                self._sockets.remove(tls.sock)
        tls.sock.close(linger=0)
        tls.sock = None


class AsyncClient:
    """asyncio client: one DEALER, a reader task routes replies to futures by request id."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0):
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        self._ctx = zmq.asyncio.Context()
        self._sock = _new_socket(self._ctx, self.endpoint)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ServerUnavailable("the client was closed"))
        self._sock.close(linger=0)
        self._ctx.term()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    deadline_ms: float | None = None,
                    priority: Priority | str | None = None) -> dict[str, np.ndarray]:
        return await self._call(wire.INFER, _infer_header(model, deadline_ms, priority),
                                _check_inputs(inputs))

    async def models(self) -> list[dict]:
        return (await self._call(wire.MODELS, {}))["models"]

    async def stats(self) -> dict:
        return await self._call(wire.STATS, {})

    async def ping(self) -> float:
        start = time.perf_counter()
        await self._call(wire.PING, {})
        return time.perf_counter() - start

    async def _call(self, kind: bytes, header: dict, tensors=None):
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        request_id = next(_ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._sock.send_multipart(wire.encode(kind, {"id": request_id, **header},
                                                        tensors), copy=False)
            msg = await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise ServerUnavailable(f"no reply from {self.endpoint} within "
                                    f"{self.timeout_s:g} s") from None
        finally:
            self._waiting.pop(request_id, None)
        return _result(msg)

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            try:
                msg = wire.decode_reply([f.buffer for f in frames])
            except InvalidInput:
                continue              # not a reply we can attribute; its caller times out
            future = self._waiting.get(msg.id) if msg.id is not None else None
            if future is not None and not future.done():
                future.set_result(msg)
