"""`edgesched top` against a real server on the simulated device: in a pseudo-terminal (curses,
q quits) and with stdout a pipe (plain periodic text)."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgesched import Client
from edgesched.commands.top import render
from edgesched.config import parse_config
from edgesched.serve.server import Server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pty and curses: Linux")


@pytest.fixture
def busy_server():
    data = {"device": {"backend": "sim", "sim_device": "orin-nano", "streams": 2},
            "telemetry": "none",
            "models": [{"name": "convnet", "path": str(ROOT / "engines/examples/convnet_sliced"),
                        "slo_ms": 50, "priority": "realtime"}]}
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/top.sock"
    stop = threading.Event()

    def camera() -> None:
        with Client(endpoint, timeout_s=20) as client:
            while not stop.is_set():
                client.infer("convnet", {"image": np.zeros((1, 3, 96, 96), np.float32)})
                time.sleep(0.02)
    with Server(parse_config(data, "top.yaml", ROOT), endpoint=endpoint):
        thread = threading.Thread(target=camera)
        thread.start()
        try:
            yield endpoint
        finally:
            stop.set()
            thread.join()


def top_command(endpoint: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgesched", "top", "--endpoint", endpoint, *extra]


def read_until(fd: int, wanted: list[bytes], timeout_s: float) -> bytes:
    out, give_up = b"", time.monotonic() + timeout_s
    while time.monotonic() < give_up and not all(w in out for w in wanted):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:          # the child closed the terminal
                break
    return out


def test_top_in_a_pseudo_terminal_draws_the_server_and_quits_on_q(busy_server):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(top_command(busy_server, "--interval", "0.5"), stdin=slave,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        screen = read_until(master, [b"convnet", b"rate/s", b"streams:", b"q: quit"], 30)
        assert b"edgesched top" in screen and b"convnet" in screen, screen[-2000:]
        assert b"\x1b[" in screen                         # drawn with terminal control codes
        assert b"board: no telemetry" in screen
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_top_without_a_terminal_prints_plain_blocks(busy_server):
    done = subprocess.run(top_command(busy_server, "--interval", "0.3", "--count", "3"),
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    blocks = [b for b in done.stdout.split("\n\n\n") if b.strip()]
    assert done.stdout.count("edgesched top") == 3 and "\x1b[" not in done.stdout
    last = done.stdout.rsplit("edgesched top", 1)[1]
    row = next(line for line in last.splitlines() if line.startswith("convnet"))
    assert float(row.split()[1]) > 5              # requests/s over the last refresh
    assert blocks and "streams: 0 [" in last


def test_render_shows_rates_drift_and_occupancy():
    def stats(completed: int, busy: list[float], drifting: bool) -> dict:
        return {"backend": "sim", "policy": "priority", "streams": 2, "uptime_s": 12.0,
                "telemetry": {"gpu_load_pct": 42.0, "gpu_freq_mhz": 612.0,
                              "emc_util_pct": 17.0, "emc_freq_mhz": 2133.0, "power_mw": 7300.0,
                              "temps_c": {"gpu": 51.5}, "nvpmodel": "15W"},
                "telemetry_source": "jtop", "stream_busy_s": busy,
                "models": {"cam": {"completed": completed, "p50_ms": 4.0, "p99_ms": 9.5,
                                   "slo_attainment": 0.995, "queue_depth": 1, "rejected": 0,
                                   "expired": 1, "failed": 0, "health": {"healthy": True},
                                   "drift": {"ratio": 1.6, "drifting": drifting,
                                             "cause": "GPU clock 1300 -> 612 MHz"}}}}
    lines = render(stats(130, [1.5, 0.25], True), stats(100, [1.0, 0.25], False), 1.0, "ipc://x")
    text = "\n".join(lines)
    assert "board: GPU 42% 612 MHz  EMC 17% 2133 MHz  7.3 W  gpu 52C  mode 15W  (jtop)" in text
    row = next(line for line in lines if line.startswith("cam"))
    assert row.split()[1:6] == ["30.00", "4.00", "9.50", "99.5%", "1"]
    assert "1.60x DRIFT" in row
    assert "0 [#####.....]  50%" in text and "1 [..........]   0%" in text
    assert "drift: cam at 1.60x the profile (GPU clock 1300 -> 612 MHz): recalibrate" in text
