"""The server side of `edgesched bench soak`: a served process to start and stop, its pid from a
PING reply, and its resident memory, open fds and threads read from /proc."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from edgesched.config import load_config
from edgesched.errors import EdgeschedError, ServerUnavailable
from edgesched.paths import default_config
from edgesched.serve import wire

START_TIMEOUT_S = 120.0      # model loading; a few seconds on a PC, longer on a cold Jetson
STOP_MARGIN_S = 20.0         # beyond the config's drain_timeout_s before we call a stop hung


def ping_pid(endpoint: str, timeout_s: float) -> int:
    """The pid in a server's PING reply (Client.ping returns only the round-trip time)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.encode(wire.PING, {"id": 1}))
        if not sock.poll(int(timeout_s * 1e3)):
            raise ServerUnavailable(f"no reply from {endpoint} within {timeout_s:g} s")
        header = wire.decode_reply(sock.recv_multipart()).header
    finally:
        sock.close()
        ctx.term()
    if not isinstance(header.get("pid"), int):
        raise EdgeschedError(f"{endpoint}: the PING reply carries no pid (an older server?)")
    return header["pid"]


def sample_process(pid: int, proc: Path = Path("/proc")) -> tuple[float | None, int | None,
                                                                 int | None]:
    """(RSS MiB, open fds, threads) of `pid`; None for what cannot be read (the process is
    gone, belongs to another user, or lives in another pid namespace or machine)."""
    rss_mib = threads = fds = None
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                rss_mib = int(value.split()[0]) / 1024          # the file says kB (KiB)
            elif key == "Threads":
                threads = int(value)
    except (OSError, ValueError):
        pass
    try:
        fds = len(os.listdir(proc / str(pid) / "fd"))
    except OSError:
        pass
    return rss_mib, fds, threads


class ServerProcess:
    """`python -m edgesched serve --config C` on a private ipc socket, started and ready."""

    def __init__(self, config: Path | None):
        config = Path(config or default_config())
        # Validates here, so a bad config is one line from us rather than a server that exits.
        self._stop_timeout_s = load_config(config).server.drain_timeout_s + STOP_MARGIN_S
        self._dir = Path(tempfile.mkdtemp(prefix="es"))  # short: unix socket paths <= 107 bytes
        self.endpoint = f"ipc://{self._dir}/soak.sock"
        self._stderr = open(self._dir / "server.stderr", "w+b")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgesched", "serve", "--config", str(config),
                 "--endpoint", self.endpoint], stdout=subprocess.PIPE, stderr=self._stderr,
                stdin=subprocess.DEVNULL)
        except BaseException:
            self._stderr.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        try:
            self._wait_serving()
        except BaseException:
            self.close()
            raise

    def _wait_serving(self) -> None:
        seen, fd = b"", self.proc.stdout.fileno()
        give_up = time.monotonic() + START_TIMEOUT_S
        while b"serving" not in seen:
            left = give_up - time.monotonic()
            if left <= 0:
                raise EdgeschedError(f"the server did not report serving within "
                                     f"{START_TIMEOUT_S:g} s{self._last_words()}")
            if select.select([fd], [], [], min(left, 0.5))[0]:
                chunk = os.read(fd, 4096)
                if not chunk:                      # end of file: it exited
                    self.proc.wait()
                    raise EdgeschedError(f"the server exited with status "
                                         f"{self.proc.returncode}{self._last_words()}")
                seen += chunk

    def _last_words(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln]
        return f": {lines[-1]}" if lines else ""

    def stop(self) -> int:
        """SIGTERM (drain, then exit) and the exit status; -9 if it had to be killed."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)
