"""The `edgesched` command as a user runs it: real subprocesses, real sockets."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edgesched import Client

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edgesched"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["serve", "--config", "/nonexistent/edgesched.yaml"], "/nonexistent/edgesched.yaml"),
    (["serve", "--endpoint", "http://x"], "--endpoint"),
    (["status", "--endpoint", "tcp://127.0.0.1:notaport"], "--endpoint"),
    (["demo", "--seconds", "-1"], "--seconds"),
    (["demo", "--policy", "fastest"], "--policy"),
    (["bench", "overhead", "--model", "nosuchmodel"], "nosuchmodel"),
    (["frobnicate"], "frobnicate"),
    (["serve", "--metrics", "*:9100"], "--metrics"),
    (["serve", "--metrics", "127.0.0.1:99999"], "--metrics"),
    (["top", "--interval", "0"], "--interval"),
    (["top", "--count", "-2"], "--count"),
    (["keys", "/tmp", "--name", "../evil"], "--name"),
    (["status", "--server-key", "/nonexistent.key", "--client-key", "/nonexistent.key_secret"],
     "server_key/client_key"),
])
def test_bad_arguments_give_one_line_and_status_2(args, words):
    line = one_line_error(run(*args))
    assert words in line


def test_bad_config_names_file_and_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("device:\n  streams: many\nmodels: []\n")
    line = one_line_error(run("serve", "--config", str(config)))
    assert "bad.yaml" in line and "device.streams" in line


def test_status_without_a_server_is_one_line(tmp_path):
    line = one_line_error(run("status", "--endpoint", f"ipc://{tmp_path}/none.sock",
                              "--timeout", "0.3"))
    assert "no reply" in line


def test_serve_answers_status_and_drains_on_sigterm():
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/cli.sock"
    proc = subprocess.Popen([*CLI, "serve", "--endpoint", endpoint], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline()
        with Client(endpoint, timeout_s=10) as client:
            out = client.infer("attention", {"tokens": np.ones((1, 32, 64), np.float32)})
        assert out["features"].shape == (1, 32, 64)
        status = run("status", "--endpoint", endpoint)
        assert status.returncode == 0, status.stderr
        assert re.search(r"attention\s+1\b", status.stdout), status.stdout
        for name in ("convnet", "depthwise", "attention"):
            assert name in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not os.path.exists(endpoint[len("ipc://"):])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_demo_prints_a_row_per_model():
    start = time.monotonic()
    result = run("demo", "--seconds", "2", "--policy", "fifo")
    assert result.returncode == 0, result.stderr
    assert "policy fifo" in result.stdout
    for name in ("convnet", "depthwise", "attention"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(name))
        served = int(row.split()[3])            # the "ok" column
        assert served > 0, row
    assert time.monotonic() - start < 300       # hang protection, not a speed assertion


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if "pytest" in line and line.startswith("python3 -m venv"))
    assert command in (ROOT / ".ci" / "run").read_text()
