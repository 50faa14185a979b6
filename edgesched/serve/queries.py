"""The server's answers to every request but INFER, on the serve thread.

Queries (MODELS, STATS, PING, shared-memory regions) are answered at once. Model control
(LOAD, UNLOAD) is checked here (admins only, serve/access.py Admins) and then carried out by
the reloader (serve/reload.py) on a thread of its own, because loading and warming a model
takes seconds: its reply is sent by the serve thread, which owns the socket.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from edgesched.errors import (
    EdgeschedError,
    InvalidInput,
    NotPermitted,
    RequestError,
    ServerError,
)
from edgesched.serve import observe, residency, shm, wire
from edgesched.version import __version__

if TYPE_CHECKING:
    from edgesched.serve.server import Server

log = logging.getLogger("edgesched.server")


def answer(server: "Server", msg: wire.Message, peer: tuple, frame) -> list | None:
    """The reply frames (after the envelope) to a query, or None when model control will
    answer later. `frame`: one received frame of the request, whose properties name the peer
    (User-Id for CURVE, Peer-Address for ipc)."""
    header = {"id": msg.id}
    if msg.kind in wire.REGION_TYPES:
        header.update(shm.answer(server.regions, msg.kind, msg.header, peer))
    elif msg.kind == wire.MODELS:
        header["models"] = models(server)
    elif msg.kind == wire.STATS:
        header.update(observe.snapshot(server), intake=server.intake.snapshot())
    elif msg.kind == wire.PING:
        header.update(version=__version__, pid=os.getpid())
    elif msg.kind in wire.CONTROL_TYPES:
        try:
            server.admins.check(frame, msg.kind.decode())
        except NotPermitted as e:
            log.warning("refused: %s", e)       # who tried to change the model set, once
            raise
        _control(server, msg, list(peer))
        return None
    return [msg.kind, wire.pack_header(header)]


def models(server: "Server") -> list[dict]:
    """MODELS: each served model's interface, health, version (None for a plain path) and
    whether the config file or a `models load` put it there."""
    health = server.engine.health.snapshot()
    entries = {m.name: m for m in server.config.models}
    origin = server.reloader.origin
    out = []
    for m in list(server.models.values()):
        entry = entries.get(m.name)
        out.append({**m.to_wire(), "healthy": health.get(m.name, {}).get("healthy", True),
                    "version": None if entry is None else entry.version,
                    "path": None if entry is None else str(entry.path),
                    "origin": origin(m.name), **residency.model_fields(server, m.name)})
    return out


def refused(server: "Server", error: InvalidInput) -> RequestError:
    """Count a request the wire refused; the error to answer it with. A bad deadline or
    priority names its model (error.model): an unknown one is answered UnknownModel (the
    model is looked up first), a served one counts as that model's invalid request."""
    model = getattr(error, "model", None)
    if model is None:
        server.stats.count_bad_request(unknown_model=False)
    elif model not in server.models:
        unknown = server._unknown_model(model)
        unknown.request_id = getattr(error, "request_id", None)
        return unknown
    else:
        server.stats.count(model, "invalid")
    return error


def _control(server: "Server", msg: wire.Message, envelope: list) -> None:
    """Carry out a LOAD or UNLOAD on its own thread (one at a time: the reloader's lock)."""
    def run() -> None:
        try:
            if msg.kind == wire.LOAD:
                result = server.reloader.load(wire.decode_load(msg.header))
            else:
                result = server.reloader.unload(wire.decode_unload(msg.header))
            frames = [msg.kind, wire.pack_header({"id": msg.id, **result})]
        except RequestError as e:
            frames = wire.encode_error(msg.id, e)
        except Exception as e:
            if not isinstance(e, EdgeschedError):
                log.exception("%s failed inside the server", msg.kind.decode())
            frames = wire.encode_error(msg.id, ServerError(f"{msg.kind.decode()} failed inside "
                                                           "the server"))
        _reply(server, envelope + frames)
    threading.Thread(target=run, name="edgesched-control", daemon=True).start()


def _reply(server: "Server", frames: list) -> None:
    # The ROUTER is the serve thread's alone (one socket, one thread): the reply is sent there,
    # between two engine steps. After a stop it is dropped and counted (Server._forward).
    server.engine.call_soon(lambda: server._forward(frames, server._router))


__all__ = ["answer", "models", "refused"]
