"""The client library: `Client` (blocking, thread-safe); `AsyncClient` (asyncio) is in
serve/async_client.py.

`Client` gives each calling thread its own DEALER socket (ZeroMQ sockets are not thread-safe),
so many threads share one Client with no extra thread hop on the request path. Pipelining:
`submit()` sends and returns a `Pending`; `result()` collects it (on the same thread).
Output arrays are read-only views of the received message (zero-copy): `.copy()` to modify.

Restarts: ZeroMQ reconnects by itself, and requests sent while the server is down are
delivered when it is back. A request in flight when the connection drops (the server was
killed or restarted) cannot be answered: a socket monitor sees the disconnect and such
requests end at once with `ServerUnavailable`; whether they ran is unknown.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Mapping

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from edgesched.endpoints import default_endpoint
from edgesched.errors import (
    ConfigError,
    InvalidInput,
    ServerUnavailable,
    error_from_code,
)
from edgesched.serve import multipart
from edgesched.serve import regions as shared
from edgesched.serve import wire
from edgesched.serve.access import apply_client_keys, load_client_keys
from edgesched.types import Priority, Timings

_ids = itertools.count(1)       # process-wide, so ids never repeat across sockets
# Socket events that end the requests in flight (the server cannot answer them any more).
_LOST = {zmq.EVENT_DISCONNECTED: "the connection to the server was lost (stopped, killed or "
                                 "restarted) while the request was in flight",
         zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused the connection (CURVE keys)",
         zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the server refused the connection (protocol)",
         zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the connection handshake with the server failed"}
_MONITORED = 0
for _event in _LOST:
    _MONITORED |= _event


def _result(msg: wire.Message):
    """A reply's value, or raise the typed error it carries."""
    if msg.kind == wire.ERROR:
        raise error_from_code(str(msg.header.get("code")), str(msg.header.get("message")))
    if msg.kind == wire.INFER:
        return msg.tensors
    return msg.header


def _new_socket(ctx: zmq.Context, endpoint: str,
                keys: tuple[bytes, bytes, bytes] | None) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER connected to `endpoint`, and its monitor (attached first: no event missed)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    apply_client_keys(sock, keys)
    monitor = sock.get_monitor_socket(_MONITORED)
    sock.connect(endpoint)
    return sock, monitor


def _close_socket(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)


def _lost_reason(monitor) -> str | None:
    """The reason in the first connection-ending event, if the monitor has any; drains it."""
    reason = None
    while multipart.ready(monitor):
        event = parse_monitor_message(monitor.recv_multipart())["event"]
        reason = reason or _LOST.get(event)
    return reason


class _Conn:
    """One thread's connection: its DEALER, the DEALER's monitor, the ids it awaits replies to,
    and replies (or errors) that arrived before their Pending was collected."""

    def __init__(self, ctx: zmq.Context, endpoint: str, keys):
        self.sock, self.monitor = _new_socket(ctx, endpoint, keys)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.waiting: set[int] = set()
        self.stash: dict[int, object] = {}       # id -> Message, or the error to raise
        self.registered: set[str] = set()        # regions this connection registered

    def fail_waiting(self, reason: str) -> None:
        for request_id in self.waiting:
            self.stash[request_id] = ServerUnavailable(reason)
        self.waiting.clear()

    def check_monitor(self) -> None:
        """Act on connection events. Replies that arrived before a disconnect are already in
        the socket's queue: read them first, so only requests truly unanswered fail."""
        if multipart.ready(self.monitor):
            self.read_replies()
            reason = _lost_reason(self.monitor)
            if reason is not None:
                self.fail_waiting(reason)
                self.registered.clear()          # a restarted server knows no regions

    def read_replies(self) -> None:
        """Move every reply the socket holds now into the stash (never waits)."""
        sock = self.sock
        while multipart.ready(sock):
            frames = multipart.receive(sock)
            try:
                msg = wire.decode_reply([f.buffer for f in frames])
            except InvalidInput:
                continue      # not a reply we can read: whoever waits for it times out
            # None: an error about a request the server could not read. Unknown ids: a
            # request already given up on (lost or timed out): dropped.
            if msg.id in self.waiting:
                self.waiting.discard(msg.id)
                self.stash[msg.id] = msg


class Pending:
    """A request in flight on one client thread. `timings` is None until `result()` has
    returned an INFER request's outputs, then the server's view of it (Timings: queue_ms,
    device_ms, total_ms from arrival to done)."""

    def __init__(self, client: "Client", request_id: int, timeout_s: float,
                 targets: dict | None = None):
        self._client, self.id, self._targets = client, request_id, targets
        self._give_up_s = time.monotonic() + timeout_s
        self._thread = threading.get_ident()
        self.timings: Timings | None = None

    def result(self):
        if threading.get_ident() != self._thread:
            raise RuntimeError("collect a Pending on the thread that submitted it")
        msg = self._client._wait(self.id, self._give_up_s)
        value = _result(msg)
        self.timings = msg.timings
        return shared.fill_targets(value, self._targets) if self._targets else value


def _keys(server_key, client_key) -> tuple[bytes, bytes, bytes] | None:
    if (server_key is None) != (client_key is None):
        raise ConfigError("client", "server_key/client_key", "both CURVE certificates or neither")
    return None if server_key is None else load_client_keys(server_key, client_key)


class Client:
    """server_key / client_key: for a server that requires CURVE (a tcp bind beyond loopback):
    the server's public certificate (.key) and this client's secret one (.key_secret)."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0, *,
                 server_key: str | os.PathLike | None = None,
                 client_key: str | os.PathLike | None = None):
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        self._keys = _keys(server_key, client_key)
        self._ctx = zmq.Context()
        self._tls = threading.local()
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False
        self._regions = shared.ClientRegions()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._conns:
                _close_socket(conn.sock, conn.monitor)
            self._conns.clear()
        self._ctx.term()

    # --- the API ------------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None,
              priority: Priority | str | None = None, *, timings: bool = False,
              outputs: Mapping[str, np.ndarray] | None = None):
        """The outputs by name; with timings=True, (outputs, Timings) (the server's view).
        outputs: name -> an array in a region registered writable; the server writes that
        output there (no bytes back through the socket) and the result holds the array."""
        pending = self.submit(model, inputs, deadline_ms, priority, outputs=outputs)
        outputs = pending.result()
        return (outputs, pending.timings) if timings else outputs

    def submit(self, model: str, inputs: Mapping[str, np.ndarray],
               deadline_ms: float | None = None, priority: Priority | str | None = None, *,
               outputs: Mapping[str, np.ndarray] | None = None) -> Pending:
        request = wire.infer_request(next(_ids), model, inputs, deadline_ms, priority, outputs)
        locate, used = self._regions.tracking()
        frames = wire.encode_infer(request, locate)
        for name in used - self._conn().registered:      # first use on this thread
            self._region_call(wire.REGISTER, name)
        return self._send(request.id, frames, request.targets)

    # --- shared-memory tensors (serve/shm.py: the ownership contract) -------------------------
    def register(self, shm, writable: bool = False) -> shared.Region:
        """Register a multiprocessing.shared_memory.SharedMemory with the server: arrays in it
        are then sent by reference. Keep it open (and its bytes unchanged while a request
        reading them is in flight) until unregister(). writable: outputs may be written into
        it too (`infer(..., outputs=...)`); the server maps it read-write."""
        region = self._regions.add(shm, writable)
        try:
            self._region_call(wire.REGISTER, region.name)
        except BaseException:
            self._regions.remove(region.name)
            raise
        return region

    def unregister(self, shm) -> None:
        """Stop sending by reference from `shm` (a SharedMemory, Region or name); the server
        unmaps it once no request of this client's reads it (other threads' connections
        release it when the Client closes)."""
        name = getattr(shm, "name", shm).lstrip("/")
        self._regions.remove(name)
        if name in self._conn().registered:
            self._region_call(wire.UNREGISTER, name)

    def regions(self) -> list[dict]:
        """The regions this thread's connection has registered: region, bytes, in_flight."""
        return self._query(wire.REGION_STATUS).result()["regions"]

    def shared_array(self, region: shared.Region, shape, dtype, offset: int = 0) -> np.ndarray:
        return shared.shared_array(region, shape, dtype, offset)

    def _region_call(self, kind: bytes, name: str) -> dict:
        request_id = next(_ids)
        reply = self._send(request_id, wire.encode(kind, shared.register_header(
            request_id, self._regions.get(name) if kind == wire.REGISTER else None, name)))
        result = reply.result()
        (self._conn().registered.add if kind == wire.REGISTER
         else self._conn().registered.discard)(name)
        return result

    def models(self) -> list[dict]:
        return self._query(wire.MODELS).result()["models"]

    def stats(self) -> dict:
        return self._query(wire.STATS).result()

    def ping(self) -> float:
        """Round-trip time to the server in seconds."""
        start = time.perf_counter()
        self._query(wire.PING).result()
        return time.perf_counter() - start

    # --- per-thread socket --------------------------------------------------------------------
    def _conn(self) -> _Conn:
        conn = getattr(self._tls, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise ServerUnavailable("the client is closed")
                conn = self._tls.conn = _Conn(self._ctx, self.endpoint, self._keys)
                self._conns.append(conn)
        return conn

    def _query(self, kind: bytes) -> Pending:
        request_id = next(_ids)
        return self._send(request_id, wire.encode(kind, {"id": request_id}))

    def _send(self, request_id: int, frames: list, targets: dict | None = None) -> Pending:
        conn = self._conn()
        # A disconnect that already happened must not be blamed on this request.
        conn.check_monitor()
        multipart.send(conn.sock, frames)
        conn.waiting.add(request_id)
        return Pending(self, request_id, self.timeout_s, targets)

    def _wait(self, request_id: int, give_up_s: float) -> wire.Message:
        conn = self._conn()
        while request_id not in conn.stash:
            left_ms = (give_up_s - time.monotonic()) * 1e3
            events = dict(conn.poller.poll(max(int(left_ms), 1))) if left_ms > 0 else {}
            if conn.sock in events:
                conn.read_replies()
            if conn.monitor in events:
                conn.check_monitor()
            if not events and time.monotonic() >= give_up_s:
                self._reset(conn)
                raise ServerUnavailable(f"no reply from {self.endpoint} within "
                                        f"{self.timeout_s:g} s")
        item = conn.stash.pop(request_id)
        if isinstance(item, ServerUnavailable):
            raise ServerUnavailable(f"{self.endpoint}: {item}")
        return item

    def _reset(self, conn: _Conn) -> None:
        """Drop a connection that timed out: its other requests can no longer be answered
        (they end with ServerUnavailable when collected) and late replies go with it."""
        conn.fail_waiting("the client gave up on the connection after another request timed "
                          "out")
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        _close_socket(conn.sock, conn.monitor)
        self._tls.conn = None
        # Its errors stay collectable on this thread's next connection.
        self._conn().stash.update(conn.stash)
