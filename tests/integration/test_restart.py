"""A server killed (SIGKILL) and started again: requests in flight end with ServerUnavailable at
once, not at the client's timeout; the stale socket file does not block the next start; the
same Client (and AsyncClient) object reconnects by itself and is served again."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgesched import AsyncClient, Client, ServerUnavailable
from tests.models import SLOW_OUTPUT, slow_input

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
PATIENT_S = 120.0   # client timeout: far longer than the test, so only a detected loss ends it


class ServerProcess:
    def __init__(self, config: Path, endpoint: str):
        self.config, self.endpoint = config, endpoint
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgesched", "serve", "--config", str(self.config),
             "--endpoint", self.endpoint], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "serving" in line, f"server did not start: {line!r}"
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        return code


@pytest.fixture
def server(tmp_path, short_dir, model_files):
    config = tmp_path / "edgesched.yaml"
    config.write_text(yaml.safe_dump({
        "device": {"backend": "onnxruntime", "streams": 1}, "telemetry": "none",
        "models": [{"name": "slow", "path": str(model_files.slow), "slo_ms": 10_000}]}))
    s = ServerProcess(config, f"ipc://{short_dir}/r.sock")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


def test_in_flight_requests_fail_fast_and_the_client_reconnects_after_a_restart(server):
    server.start()
    with Client(server.endpoint, timeout_s=PATIENT_S) as client:
        assert client.infer("slow", slow_input(0))["y"].shape == SLOW_OUTPUT[1]
        pending = [client.submit("slow", slow_input(i)) for i in range(30)]
        client.ping()                        # all 30 read by the server, most still queued
        server.kill()
        assert os.path.exists(server.endpoint[len("ipc://"):])     # left behind by SIGKILL
        answered = lost = 0
        for p in pending:
            try:
                p.result()
                answered += 1
            except ServerUnavailable as e:
                # The detected loss, not the (far longer) client timeout.
                assert "connection to the server was lost" in str(e)
                lost += 1
        assert lost >= 1 and answered + lost == 30

        server.start()                         # the stale socket file is replaced
        out = client.infer("slow", slow_input(1))    # same Client, same thread: reconnected
        assert out["y"].shape == SLOW_OUTPUT[1]
        # A request sent while no server runs is delivered once one is back.
        server.kill()
        late = client.submit("slow", slow_input(2))
        server.start()
        assert late.result()["y"].shape == SLOW_OUTPUT[1]
    assert server.stop() == 0


def test_async_client_in_flight_requests_fail_fast_and_it_reconnects(server):
    server.start()

    async def scenario():
        async with AsyncClient(server.endpoint, timeout_s=PATIENT_S) as client:
            await client.infer("slow", slow_input(0))
            tasks = [asyncio.ensure_future(client.infer("slow", slow_input(i)))
                     for i in range(30)]
            await client.ping()
            server.kill()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert errors and all(isinstance(e, ServerUnavailable) for e in errors)
            server.start()
            out = await client.infer("slow", slow_input(1))
            np.testing.assert_array_equal(out["y"].shape, SLOW_OUTPUT[1])
    asyncio.run(asyncio.wait_for(scenario(), PATIENT_S / 2))
    assert server.stop() == 0


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(server):
    server.start()
    with Client(server.endpoint, timeout_s=PATIENT_S) as client:
        pending = [client.submit("slow", slow_input(i)) for i in range(10)]
        client.ping()                        # all 10 accepted before the signal
        server.proc.send_signal(signal.SIGTERM)
        for p in pending:                    # drained within server.drain_timeout_s (10 s)
            assert p.result()["y"].shape == SLOW_OUTPUT[1]
    assert server.stop() == 0
    assert not os.path.exists(server.endpoint[len("ipc://"):])
