"""Suite-wide settings (the repository's top level is fixed, so they live here, not in an ini)
and fixtures more than one layer uses."""
from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


def pytest_configure(config):
    # Warnings are errors: a leaked socket or a deprecated call fails the suite (httpx's habit).
    config.addinivalue_line("filterwarnings", "error")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp short enough for unix socket paths (107 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="es"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir) -> Iterator[tuple[socket.socket, str]]:
    """(socket, NOTIFY_SOCKET value): a datagram socket bound where systemd's would be
    (tests/notify_socket.py reads it)."""
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, str(path)
    finally:
        sock.close()
