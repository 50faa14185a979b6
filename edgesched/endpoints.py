"""Endpoints and who may bind them: the default per-user ipc path, the loopback test, the rule
that a bind beyond this machine needs CURVE keys, reading those keys, group ids.

Plain rules, shared by the config (which refuses a bad setting before anything starts), the
server and the client; the sockets themselves are serve/'s.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from edgesched.errors import ConfigError

SYSTEMD_ENDPOINT = "ipc:///run/edgesched/edgesched.sock"
_LOOPBACK_NAMES = {"localhost", "lo"}      # a host name, and the loopback interface


def default_endpoint() -> str:
    """The per-user ipc endpoint for `endpoint: null`; the server creates its directory.

    XDG_RUNTIME_DIR is private to the user; /tmp serves sessions without one (plain ssh).
    """
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime_dir):
        return f"ipc://{runtime_dir.rstrip('/')}/edgesched/edgesched.sock"
    return f"ipc:///tmp/edgesched-{os.getuid()}/edgesched.sock"


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def is_loopback(endpoint: str) -> bool:
    """True for tcp://<loopback host>:port (and for every non-tcp endpoint: not a network)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                           # `*`, a host name or an interface: a network


def metrics_address(value: str) -> tuple[str, int]:
    """(host, port) of a metrics listener from "PORT" (loopback) or "HOST:PORT" ("[::1]:PORT"
    for IPv6). ValueError (one line) otherwise. All interfaces must be written out (0.0.0.0),
    never implied by an empty host or `*`: the metrics have no authentication."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]")
    if not host or host == "*":
        raise ValueError("HOST:PORT with an explicit host (127.0.0.1, or 0.0.0.0 for every "
                         "interface)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("PORT or HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def host_is_loopback(host: str) -> bool:
    return is_loopback(f"tcp://[{host}]:1" if ":" in host else f"tcp://{host}:1")


def require_keys(endpoint: str, keys: object | None, source: str, key: str) -> None:
    """ConfigError if `endpoint` reaches beyond this machine and no CURVE keys are set."""
    if keys is None and not is_loopback(endpoint):
        raise ConfigError(source, key, "a loopback tcp host (127.0.0.1, [::1], localhost), or "
                          "server.curve_secret_key and server.curve_authorized_keys to bind "
                          "beyond this machine", endpoint)


def group_id(name: str | int) -> int:
    """The gid of a group name or number; KeyError if this machine has no such group."""
    import grp
    if isinstance(name, int):
        return grp.getgrgid(name).gr_gid
    return grp.getgrnam(name).gr_gid


def read_server_keys(secret_key: Path, authorized_keys: Path) -> tuple[bytes, bytes]:
    """(public, secret) of a server's CURVE certificate; ValueError or OSError, one line, when
    it holds no secret key or the directory of client keys holds none."""
    import zmq.auth
    public, secret = zmq.auth.load_certificate(str(secret_key))
    if secret is None:
        raise ValueError(f"{secret_key} holds no secret key (a .key_secret file is needed)")
    if not any(Path(authorized_keys).glob("*.key")):
        raise ValueError(f"{authorized_keys} holds no client public key (*.key)")
    return public, secret
