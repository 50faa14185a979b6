"""The memory budget on a real Server over ONNX Runtime (serve/residency.py): best-effort
models evicted least-recently-used and reloaded from host RAM on their next request, the
realtime one pinned, residency in MODELS and STATS, ModelUnavailable for a request whose
deadline ends before its model is back, and a budget the pinned models cannot fit refused.

Footprints here are the models' initializer bytes: the RSS part of the measurement
(backends/ort_footprint.py) is zeroed, so which model fits where does not depend on what
else the test process allocates meanwhile."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import yaml

from edgesched import Client
from edgesched.backends import ort_footprint
from edgesched.errors import ConfigError, ModelUnavailable
from edgesched.serve.reload import Reloader
from edgesched.serve.server import Server
from tests.integration.conftest import CLIENT_TIMEOUT_S, EXAMPLES, make_config, serving
from tests.models import example_input

MIB = 1024 * 1024
WEIGHTS = {"convnet": 705512, "attention": 400004, "depthwise": 451736}   # initializer bytes
# The pinned convnet and either best-effort model fit; all three do not.
BUDGET_MB = (WEIGHTS["convnet"] + WEIGHTS["depthwise"] + 100_000) / MIB
MODELS = [{"name": "convnet", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 50,
           "priority": "realtime"},
          {"name": "attention", "path": str(EXAMPLES / "attention.onnx"), "slo_ms": 250},
          {"name": "depthwise", "path": str(EXAMPLES / "depthwise.onnx"), "slo_ms": 250}]


@pytest.fixture(autouse=True)
def weights_only(monkeypatch):
    monkeypatch.setattr(ort_footprint, "rss_bytes", lambda: 0)
    assert {m: ort_footprint.initializer_bytes(EXAMPLES / f"{m}.onnx") for m in WEIGHTS} == \
        WEIGHTS


def _states(client: Client) -> dict:
    return {m["name"]: m["residency"]["state"] for m in client.models()}


def test_lru_eviction_and_reload_from_ram_with_the_realtime_model_pinned(ort_run):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        assert _states(client) == {"convnet": "resident", "attention": "resident",
                                   "depthwise": "evicted"}
        for seed, name in enumerate(["depthwise", "convnet", "attention", "depthwise"]):
            x = example_input(name, seed)
            got = client.infer(name, x)
            want = ort_run(EXAMPLES / f"{name}.onnx", x)
            for output, value in want.items():
                np.testing.assert_allclose(got[output], value, rtol=1e-4, atol=1e-5)
            stats = client.stats()
            assert stats["memory_budget"]["used_mb"] <= BUDGET_MB
        assert _states(client) == {"convnet": "resident", "attention": "evicted",
                                   "depthwise": "resident"}
        residency = {m: s["residency"] for m, s in client.stats()["models"].items()}
        assert residency["convnet"]["evictions"] == 0 and residency["convnet"]["loads"] == 1
        assert residency["depthwise"]["loads"] == 3 and residency["depthwise"]["evictions"] == 2
        assert residency["attention"]["evictions"] == 2
        assert residency["depthwise"]["last_load_from"] == "ram"   # reloads read no file
        assert residency["depthwise"]["footprint_mb"] == round(WEIGHTS["depthwise"] / MIB, 3)
        assert server.residency.blobs.disk_reads == 3              # each file once, at start


def test_a_deadline_that_ends_before_the_reload_is_model_unavailable(monkeypatch):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        answered, load = threading.Event(), server.backend.load

        def slow_load(*args, **kwargs):
            assert answered.wait(CLIENT_TIMEOUT_S)    # the refusal comes first, then the load
            return load(*args, **kwargs)
        monkeypatch.setattr(server.backend, "load", slow_load)
        with pytest.raises(ModelUnavailable, match="deadline"):
            client.infer("depthwise", example_input("depthwise", 0), deadline_ms=50)
        answered.set()
        client.infer("depthwise", example_input("depthwise", 1))     # no deadline: it waits
        assert server.stats.snapshot()["models"]["depthwise"]["failed"] == 1


def test_a_budget_the_realtime_models_cannot_fit_is_refused_in_one_line(tmp_path):
    config = make_config("ipc:///tmp/unused.sock", MODELS,
                         limits_extra={"device_memory_mb": 0.5})
    with pytest.raises(ConfigError) as refused:
        Server(config)
    text = str(refused.value)
    assert "\n" not in text and "limits.device_memory_mb" in text and "convnet (0.7 MiB)" in text


def test_a_request_waiting_for_a_model_a_reload_removes_is_answered(monkeypatch, tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        removed, load = threading.Event(), server.backend.load

        def slow_load(*args, **kwargs):
            assert removed.wait(CLIENT_TIMEOUT_S)    # back only once the reload removed it
            return load(*args, **kwargs)
        monkeypatch.setattr(server.backend, "load", slow_load)
        reply: list = []
        waiter = threading.Thread(target=lambda: reply.append(_infer_or_error(
            endpoint, "depthwise", example_input("depthwise", 0))))
        waiter.start()
        give_up = time.monotonic() + CLIENT_TIMEOUT_S
        while server.residency.of("depthwise")["state"] != "loading":   # room made, loading
            assert time.monotonic() < give_up
            time.sleep(0.001)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "device": {"backend": "onnxruntime", "streams": 2},
            "server": {"endpoint": endpoint}, "telemetry": "none",
            "limits": {"device_memory_mb": BUDGET_MB}, "models": MODELS[:2]}))
        assert Reloader(server, str(config)).reload() is not None
        assert "depthwise" not in [m["name"] for m in client.models()]
        removed.set()
        waiter.join(CLIENT_TIMEOUT_S)
        assert isinstance(reply[0], ModelUnavailable) and "removed" in str(reply[0])
        client.infer("attention", example_input("attention", 0))   # the others still serve
        give_up = time.monotonic() + CLIENT_TIMEOUT_S     # the late load is not left behind
        while "depthwise" in server.backend._slices:
            assert time.monotonic() < give_up
            time.sleep(0.005)


def _infer_or_error(endpoint: str, model: str, inputs: dict):
    with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        try:
            return client.infer(model, inputs)
        except ModelUnavailable as e:
            return e


def test_reloads_forget_the_model_files_no_eviction_needs(tmp_path):
    """A removed model's file leaves host RAM with it, a model a reload adds is kept (it is
    under the budget) and a new version (outside it) is not; the others' files stay."""
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        blobs = server.residency.blobs
        assert all(EXAMPLES / f"{m}.onnx" in blobs for m in WEIGHTS)
        config = tmp_path / "c.yaml"

        def reload(models: list) -> None:
            config.write_text(yaml.safe_dump({
                "device": {"backend": "onnxruntime", "streams": 2},
                "server": {"endpoint": endpoint}, "telemetry": "none",
                "limits": {"device_memory_mb": BUDGET_MB}, "models": models}))
            assert Reloader(server, str(config)).reload() is not None
            done = threading.Event()
            server.engine.call_soon(done.set)        # after the prune the reload queued
            assert done.wait(CLIENT_TIMEOUT_S)

        reload(MODELS[:2])                                     # depthwise removed
        assert EXAMPLES / "depthwise.onnx" not in blobs
        assert blobs.held_bytes == sum((EXAMPLES / f"{m}.onnx").stat().st_size
                                       for m in ("convnet", "attention"))
        reload(MODELS[:2] + [dict(MODELS[2], name="depth2")])   # added: under the budget
        assert EXAMPLES / "depthwise.onnx" in blobs
        for name in ("depth2", "attention", "convnet"):
            client.infer(name, example_input(name if name != "depth2" else "depthwise", 1))
        changed = dict(MODELS[1], path=str(tmp_path / "attention.onnx"))
        (tmp_path / "attention.onnx").write_bytes((EXAMPLES / "attention.onnx").read_bytes())
        reload([MODELS[0], changed])        # depth2 removed; attention's new version outside
        assert EXAMPLES / "depthwise.onnx" not in blobs
        assert EXAMPLES / "attention.onnx" not in blobs
        assert tmp_path / "attention.onnx" not in blobs
        assert EXAMPLES / "convnet.onnx" in blobs
        client.infer("attention", example_input("attention", 2))


def test_a_prune_asked_for_during_a_load_waits_for_none_and_runs_as_the_load_ends(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, _):
        residency = server.residency
        stray = tmp_path / "stray.onnx"              # kept, and needed by no model
        stray.write_bytes(b"x" * 10)
        residency.blobs.read(stray)
        with residency.loading("stray"):             # as a load holds it
            asker = threading.Thread(target=residency.prune)
            asker.start()
            asker.join(CLIENT_TIMEOUT_S)
            assert not asker.is_alive()              # it never waits for the load
            assert stray in residency.blobs          # nothing forgotten under a load
        assert stray not in residency.blobs          # the load's release pruned
        assert EXAMPLES / "depthwise.onnx" in residency.blobs     # a budget model's stays


def _reload_to(server, endpoint: str, config, models: list):
    config.write_text(yaml.safe_dump({
        "device": {"backend": "onnxruntime", "streams": 2},
        "server": {"endpoint": endpoint}, "telemetry": "none",
        "limits": {"device_memory_mb": BUDGET_MB}, "models": models}))
    return Reloader(server, str(config)).reload()


def test_a_model_a_reload_adds_comes_under_the_budget(tmp_path, ort_run):
    with serving(MODELS[:2], limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        client.infer("attention", example_input("attention", 0))
        assert _reload_to(server, endpoint, tmp_path / "c.yaml", MODELS) is not None
        give_up = time.monotonic() + CLIENT_TIMEOUT_S     # attention is evicted for it
        while _states(client) != {"convnet": "resident", "attention": "evicted",
                                  "depthwise": "resident"}:
            assert time.monotonic() < give_up, _states(client)
            time.sleep(0.005)
        assert client.stats()["memory_budget"]["used_mb"] <= BUDGET_MB
        x = example_input("attention", 1)                # back from RAM, depthwise out
        got = client.infer("attention", x)
        want = ort_run(EXAMPLES / "attention.onnx", x)
        for output, value in want.items():
            np.testing.assert_allclose(got[output], value, rtol=1e-4, atol=1e-5)
        assert _states(client)["depthwise"] == "evicted"
        assert client.stats()["models"]["attention"]["residency"]["last_load_from"] == "ram"
        assert client.stats()["memory_budget"]["used_mb"] <= BUDGET_MB


def test_a_realtime_model_a_reload_adds_that_cannot_be_pinned_is_refused(tmp_path, caplog):
    with serving(MODELS[:2], limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        extra = [dict(MODELS[2], name="depth_rt", priority="realtime"),    # with convnet:
                 dict(MODELS[1], name="att_rt", priority="realtime")]      # 1.5 MiB > 1.2
        with caplog.at_level(logging.ERROR, logger="edgesched.reload"):
            assert _reload_to(server, endpoint, tmp_path / "c.yaml", MODELS[:2] + extra) is None
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and "limits.device_memory_mb" in refused[0]
        assert "\n" not in refused[0] and "depth_rt" in refused[0]
        assert sorted(m["name"] for m in client.models()) == ["attention", "convnet"]
        client.infer("convnet", example_input("convnet", 0))
