"""A real server under a stand-in systemd: READY=1 once clients can connect, watchdog pings
from the engine loop, STOPPING=1 on the way out."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgesched import Client
from edgesched.config import parse_config
from edgesched.serve.server import Server
from tests.notify_socket import notifier_for, received

ROOT = Path(__file__).resolve().parents[2]


def sim_config(endpoint: str):
    data = {"device": {"backend": "sim", "sim_device": "orin-nano", "streams": 2},
            "scheduler": {"policy": "greedy"}, "telemetry": "none",
            "server": {"endpoint": endpoint, "drain_timeout_s": 2.0},
            "models": [{"name": "classifier",
                        "path": str(ROOT / "engines/workloads/classifier.onnx"),
                        "slo_ms": 100}]}
    return parse_config(data, "<systemd test>", ROOT)


def test_a_server_says_ready_pings_while_serving_and_says_stopping(listener, short_dir):
    sock, address = listener
    endpoint = f"ipc://{short_dir}/s.sock"
    notifier = notifier_for(address, WATCHDOG_USEC="200000")       # ping every 0.1 s
    try:
        server = Server(sim_config(endpoint), notifier=notifier)
        try:
            assert received(sock, 0.3) == []           # models loaded, socket not yet bound
            server.start()
            early = received(sock, 0.5)
            # READY=1 means clients can connect now.
            with Client(endpoint, timeout_s=10) as client:
                out = client.infer("classifier",
                                   {"image": np.zeros((1, 3, 224, 224), np.float32)})
            assert out["logits"].shape == (1, 1000)
        finally:
            server.stop()
        late = received(sock, 0.3)
    finally:
        notifier.close()
    messages = early + late
    assert messages[0] == "READY=1"
    assert set(messages) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}
    assert messages.count("READY=1") == 1 and messages.count("STOPPING=1") == 1
    stopping = messages.index("STOPPING=1")
    assert messages[1:stopping].count("WATCHDOG=1") >= 2       # 0.5 s at one per 0.1 s
    # Pings during the drain are allowed (the engine is alive), nothing else after STOPPING=1.
    assert set(messages[stopping + 1:]) <= {"WATCHDOG=1"}


def test_a_stuck_engine_stops_the_pings(listener, short_dir):
    """The ping comes from the engine loop: when a step hangs, systemd hears nothing."""
    sock, address = listener
    notifier = notifier_for(address, WATCHDOG_USEC="200000")
    server = Server(sim_config(f"ipc://{short_dir}/s.sock"), notifier=notifier)
    release, stuck = threading.Event(), threading.Event()
    try:
        server.start()
        assert received(sock, 0.3)[:2] == ["READY=1", "WATCHDOG=1"]
        step = server.engine.step

        def hanging_step(max_wait_s: float) -> None:
            stuck.set()
            release.wait(10)
            step(max_wait_s)

        server.engine.step = hanging_step
        assert stuck.wait(5)
        received(sock, 0.05)                        # a ping sent just before the hang
        assert received(sock, 0.5) == []           # 2.5 ping intervals: silence
        release.set()
        assert "WATCHDOG=1" in received(sock, 0.3)  # alive again
    finally:
        release.set()
        server.stop()
        notifier.close()


def test_a_server_finds_systemd_through_the_environment(listener, short_dir, monkeypatch):
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    server = Server(sim_config(f"ipc://{short_dir}/s.sock")).start()
    server.stop()
    assert received(sock) == ["READY=1", "STOPPING=1"]
    assert server.notifier._sock is None            # its own notifier: closed on stop


def test_a_server_that_never_started_says_only_stopping(listener, short_dir):
    sock, address = listener
    with notifier_for(address, WATCHDOG_USEC="200000") as notifier:
        Server(sim_config(f"ipc://{short_dir}/s.sock"), notifier=notifier).stop()
    assert received(sock) == ["STOPPING=1"]


