"""A stand-in for systemd's $NOTIFY_SOCKET: a datagram socket the tests bind themselves.

Socket files live in short directories under /tmp (`tempfile.mkdtemp`): pytest's tmp_path
can pass the 107-byte unix socket path limit.
"""
from __future__ import annotations

import socket
import time

from edgesched.serve.systemd import Notifier


def received(sock: socket.socket, wait_s: float = 0.2) -> list[str]:
    """Every datagram queued now or arriving within the next `wait_s`."""
    messages = []
    end_s = time.monotonic() + wait_s
    while True:
        sock.settimeout(max(end_s - time.monotonic(), 1e-3))
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            return messages


def pending(sock: socket.socket) -> list[str]:
    """The datagrams already queued (a unix datagram is queued before sendto() returns)."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return messages


def notifier_for(address: str, clock=None, **env: str) -> Notifier:
    environ = {"NOTIFY_SOCKET": address, **env}
    return Notifier.from_env(environ, **({"clock": clock} if clock else {}))
