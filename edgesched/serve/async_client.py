"""`AsyncClient`: the client library for asyncio (serve/client.py has the blocking Client and
states the contracts both keep: pipelining, shared-memory tensors, restarts)."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Mapping

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from edgesched.endpoints import default_endpoint
from edgesched.errors import InvalidInput, ServerUnavailable
from edgesched.serve import regions as shared
from edgesched.serve import wire
from edgesched.serve.client import _LOST, _close_socket, _ids, _keys, _new_socket, _result
from edgesched.types import Priority


class AsyncClient:
    """asyncio client: one DEALER, a reader task routes replies to futures by request id and
    ends every waiting future with ServerUnavailable when the connection drops."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0, *,
                 server_key: str | os.PathLike | None = None,
                 client_key: str | os.PathLike | None = None):
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        keys = _keys(server_key, client_key)
        self._ctx = zmq.asyncio.Context()
        self._sock, self._monitor = _new_socket(self._ctx, self.endpoint, keys)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._regions, self._registered = shared.ClientRegions(), set()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for task in (self._reader, self._watcher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._fail_waiting("the client was closed")
        _close_socket(self._sock, self._monitor)
        self._ctx.term()

    def _fail_waiting(self, reason: str) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ServerUnavailable(f"{self.endpoint}: {reason}"))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    deadline_ms: float | None = None, priority: Priority | str | None = None,
                    *, timings: bool = False, outputs: Mapping[str, np.ndarray] | None = None):
        """The outputs by name; with timings=True, (outputs, Timings) (the server's view);
        outputs: as Client.infer (written into a region registered writable)."""
        request = wire.infer_request(next(_ids), model, inputs, deadline_ms, priority, outputs)
        locate, used = self._regions.tracking()
        frames = wire.encode_infer(request, locate)
        for name in used - self._registered:      # again after a reconnect
            await self._region_call(wire.REGISTER, name)
        msg = await self._exchange(request.id, frames)
        outputs = shared.fill_targets(_result(msg), request.targets)
        return (outputs, msg.timings) if timings else outputs

    async def register(self, shm, writable: bool = False) -> shared.Region:
        """As Client.register: arrays in `shm` are then sent by reference."""
        region = self._regions.add(shm, writable)
        try:
            await self._region_call(wire.REGISTER, region.name)
        except BaseException:
            self._regions.remove(region.name)
            raise
        return region

    async def unregister(self, shm) -> None:
        name = getattr(shm, "name", shm).lstrip("/")
        self._regions.remove(name)
        if name in self._registered:
            await self._region_call(wire.UNREGISTER, name)

    async def regions(self) -> list[dict]:
        return (await self._query(wire.REGION_STATUS))["regions"]

    def shared_array(self, region: shared.Region, shape, dtype, offset: int = 0) -> np.ndarray:
        return shared.shared_array(region, shape, dtype, offset)

    async def _region_call(self, kind: bytes, name: str) -> None:
        request_id = next(_ids)
        _result(await self._exchange(request_id, wire.encode(kind, shared.register_header(
            request_id, self._regions.get(name) if kind == wire.REGISTER else None, name))))
        (self._registered.add if kind == wire.REGISTER else self._registered.discard)(name)

    async def models(self) -> list[dict]:
        return (await self._query(wire.MODELS))["models"]

    async def stats(self) -> dict:
        return await self._query(wire.STATS)

    async def ping(self) -> float:
        start = time.perf_counter()
        await self._query(wire.PING)
        return time.perf_counter() - start

    async def _query(self, kind: bytes):
        request_id = next(_ids)
        return _result(await self._exchange(request_id, wire.encode(kind, {"id": request_id})))

    async def _exchange(self, request_id: int, frames: list) -> wire.Message:
        """Send one request's frames and wait for its reply (an ERROR reply included)."""
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read())
            self._watcher = loop.create_task(self._watch())
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._sock.send_multipart(frames, copy=False)
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise ServerUnavailable(f"no reply from {self.endpoint} within "
                                    f"{self.timeout_s:g} s") from None
        finally:
            self._waiting.pop(request_id, None)

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

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())["event"]
            if event in _LOST:
                # Replies that arrived before the disconnect: let the reader route them first.
                while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await asyncio.sleep(0)
                self._fail_waiting(_LOST[event])
                self._registered.clear()          # a restarted server knows no regions
