"""The intake byte budget under a flood of large valid requests: `edgesched serve` in its own
process, four peers each pipelining 50 requests of 16 MiB to a model that takes milliseconds
per request. Everything is answered (a result or Overloaded), and the server's peak RSS grows
by at most the budget + 64 MiB (read from its /proc/PID/status)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from edgesched import Client
from edgesched.commands.soak.server import ServerProcess
from edgesched.serve import wire
from tests import models as test_models

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
REQUEST_BYTES = 16 * MiB
BUDGET_BYTES = 96 * MiB
SLACK_BYTES = 64 * MiB          # the bound: peak RSS within budget + 64 MiB
PEERS, PER_PEER = 4, 50


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0])


@pytest.fixture
def heavy_server(tmp_path):
    model = test_models.build_heavy_input_model(tmp_path / "heavy.onnx", layers=16)
    config = tmp_path / "budget.yaml"
    config.write_text(json.dumps({
        "device": {"backend": "onnxruntime", "streams": 1}, "telemetry": "none",
        "limits": {"max_message_bytes": REQUEST_BYTES + MiB, "intake_bytes": BUDGET_BYTES,
                   "queue_depth": 64},
        "models": [{"name": "heavy", "path": str(model), "slo_ms": 1000}]}))
    server = ServerProcess(config)        # `edgesched serve` on a private socket, serving
    try:
        yield server.proc, server.endpoint
    finally:
        server.close()


def test_a_flood_of_large_requests_stays_within_the_byte_budget(heavy_server):
    proc, endpoint = heavy_server
    frame = np.ones(REQUEST_BYTES // 4, np.float32)
    with Client(endpoint, timeout_s=30) as client:
        for _ in range(3):          # ORT's arena and the allocators reach their steady state
            assert client.infer("heavy", {"x": frame})["y"].shape == (1,)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")     # VmHWM := VmRSS
        base_kib = status_kib(proc.pid, "VmRSS")

        ctx = zmq.Context()
        peers = [ctx.socket(zmq.DEALER) for _ in range(PEERS)]
        try:
            for sock in peers:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
            rid = 1000
            for _ in range(PER_PEER):
                for sock in peers:           # one message per peer in turn: all flood at once
                    rid += 1
                    sock.send_multipart(wire.encode_infer(wire.infer_request(
                        rid, "heavy", {"x": frame})), copy=False)
            outcomes: dict[str, int] = {}
            poller = zmq.Poller()
            for sock in peers:
                poller.register(sock, zmq.POLLIN)
            answered, give_up = 0, time.monotonic() + 120
            while answered < PEERS * PER_PEER and time.monotonic() < give_up:
                for sock, _ in poller.poll(1000):
                    kind, header = sock.recv_multipart()[:2]
                    code = msgpack.unpackb(header).get("code", "ok")
                    outcomes[code] = outcomes.get(code, 0) + 1
                    answered += 1
        finally:
            for sock in peers:
                sock.close(linger=0)
            ctx.term()
        peak_kib = status_kib(proc.pid, "VmHWM")
        intake = client.stats()["intake"]

    growth = (peak_kib - base_kib) * 1024
    print(f"\nflood: {outcomes}; RSS {base_kib // 1024} MiB -> peak {peak_kib // 1024} MiB "
          f"(+{growth / MiB:.0f} MiB; budget {BUDGET_BYTES // MiB} MiB); intake {intake}")
    assert answered == PEERS * PER_PEER, outcomes
    assert set(outcomes) <= {"ok", "OVERLOADED"} and outcomes.get("OVERLOADED", 0) > 0
    assert outcomes.get("ok", 0) >= BUDGET_BYTES // (REQUEST_BYTES + MiB)
    assert intake["held_bytes"] == 0 and intake["peak_bytes"] <= BUDGET_BYTES
    assert growth <= BUDGET_BYTES + SLACK_BYTES, f"+{growth / MiB:.0f} MiB"
