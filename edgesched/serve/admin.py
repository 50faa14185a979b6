"""Model control from a client: load and unload models on a running server (admins only).

The server answers once the change is done: a load after the model is loaded, warmed and
served; an unload after its last request is answered (up to the server's drain timeout).
Loading takes seconds (a TensorRT engine, a warm-up run), hence a timeout of its own.
A non-admin gets NotPermitted; a load that fails, ModelChangeRefused (the old set serves on).
"""
from __future__ import annotations

import os
from typing import Mapping

from edgesched.serve import wire
from edgesched.serve.client import Client, Pending, _ids

LOAD_TIMEOUT_S = 300.0     # a TensorRT engine deserializes and warms in seconds; a big one more


def load_model(client: Client, entry: Mapping, timeout_s: float = LOAD_TIMEOUT_S) -> dict:
    """Serve `entry`, a config file's model entry: {name, path, slo_ms, priority?, instances?,
    shapes?, version?}. A relative path is taken from this process's working directory.
    The reply: {"model", "version" (None for a plain path), "change"}."""
    entry = dict(entry)
    if isinstance(entry.get("path"), str):
        entry["path"] = os.path.abspath(os.path.expanduser(entry["path"]))
    request_id = next(_ids)
    return _call(client, request_id, wire.encode_load(request_id, entry), timeout_s)


def unload_model(client: Client, name: str, timeout_s: float = LOAD_TIMEOUT_S) -> dict:
    """Stop serving `name` and unload it; {"model", "drained"} (drained: every request it
    held was answered within the server's drain timeout)."""
    request_id = next(_ids)
    return _call(client, request_id, wire.encode_unload(request_id, name), timeout_s)


def _call(client: Client, request_id: int, frames: list, timeout_s: float) -> dict:
    client._send(request_id, frames)
    pending = Pending(client, request_id, timeout_s)   # longer than the client's timeout
    reply = pending.result()
    reply.pop("v", None)
    reply.pop("id", None)
    return reply


__all__ = ["LOAD_TIMEOUT_S", "load_model", "unload_model"]
