"""The memory budget across reloads (serve/residency_reloads.py): pinned totals count only
the models still served under the budget, so removing, replacing, adding back or retuning a
realtime model is judged by what the new set pins."""
from __future__ import annotations

import threading
import time

import pytest
import yaml

from edgesched import Client
from edgesched.errors import EdgeschedError
from edgesched.backends import ort_footprint
from edgesched.serve.reload import Reloader
from tests.integration.conftest import CLIENT_TIMEOUT_S, EXAMPLES, serving
from tests.integration.test_memory_budget import BUDGET_MB, MIB, MODELS, WEIGHTS, _states
from tests.models import example_input

# Room for the pinned convnet and attention, not for depthwise beside both.
TIGHT_MB = (WEIGHTS["convnet"] + WEIGHTS["attention"] + 50_000) / MIB


@pytest.fixture(autouse=True)
def weights_only(monkeypatch):
    monkeypatch.setattr(ort_footprint, "rss_bytes", lambda: 0)


def _reload(server, endpoint: str, path, models: list, budget_mb: float = BUDGET_MB):
    path.write_text(yaml.safe_dump({
        "device": {"backend": "onnxruntime", "streams": 2},
        "server": {"endpoint": endpoint}, "telemetry": "none",
        "limits": {"device_memory_mb": budget_mb}, "models": models}))
    return Reloader(server, str(path)).reload()


def _drained(server, name: str) -> None:
    give_up = time.monotonic() + CLIENT_TIMEOUT_S
    while name in server.engine.retiring or name in server.engine.models:
        assert time.monotonic() < give_up
        time.sleep(0.005)


def test_an_evicted_model_retuned_to_realtime_is_served(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        assert _states(client)["depthwise"] == "evicted"
        models = [MODELS[0], MODELS[1], dict(MODELS[2], priority="realtime")]
        assert _reload(server, endpoint, tmp_path / "c.yaml", models) is not None
        client.infer("depthwise", example_input("depthwise", 0))   # attention makes room
        assert _states(client) == {"convnet": "resident", "attention": "evicted",
                                   "depthwise": "resident"}


def test_a_realtime_model_removed_and_added_back_is_pinned_again(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        assert _reload(server, endpoint, tmp_path / "a.yaml", MODELS[1:]) is not None
        _drained(server, "convnet")
        assert _reload(server, endpoint, tmp_path / "b.yaml", MODELS) is not None
        client.infer("convnet", example_input("convnet", 0))
        assert server.residency.of("convnet")["pinned"]


def test_a_realtime_model_replaced_in_one_reload_is_judged_without_the_old_one(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        models = [dict(MODELS[0], name="conv2")] + MODELS[1:]
        assert _reload(server, endpoint, tmp_path / "a.yaml", models) is not None
        client.infer("conv2", example_input("convnet", 0))


@pytest.mark.parametrize("how", ["removed", "new version"])
def test_a_pinned_model_gone_from_the_budget_pins_nothing(tmp_path, how):
    with serving(MODELS, limits_extra={"device_memory_mb": TIGHT_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        assert _states(client)["depthwise"] == "evicted"
        if how == "removed":
            models = MODELS[1:]
        else:       # a new version: loaded under its own key, outside the budget
            copy = tmp_path / "convnet.onnx"
            copy.write_bytes((EXAMPLES / "convnet.onnx").read_bytes())
            models = [dict(MODELS[0], path=str(copy))] + MODELS[1:]
        assert _reload(server, endpoint, tmp_path / "a.yaml", models, TIGHT_MB) is not None
        client.infer("depthwise", example_input("depthwise", 0))   # fits beside attention


def test_a_removed_model_counts_against_the_budget_until_it_has_drained(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint):
        residency = server.residency
        before = residency._used_bytes()
        held = server.engine.retire                  # keep it draining: never retired
        server.engine.retire = lambda name: None
        try:
            assert _reload(server, endpoint, tmp_path / "a.yaml",
                           [MODELS[0], MODELS[2]]) is not None      # attention removed
            give_up = time.monotonic() + CLIENT_TIMEOUT_S
            while "attention" in residency._models:                  # dropped
                assert time.monotonic() < give_up
                time.sleep(0.005)
            assert residency._used_bytes() == before                 # still loaded
        finally:
            server.engine.retire = held
        server.engine.call_soon(lambda: held("attention"))
        _drained(server, "attention")
        assert residency._used_bytes() == before - WEIGHTS["attention"]


def test_a_model_removed_then_added_back_is_counted_once(tmp_path):
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        before = server.residency._used_bytes()
        assert _reload(server, endpoint, tmp_path / "a.yaml", [MODELS[0], MODELS[2]])
        _drained(server, "attention")
        assert _reload(server, endpoint, tmp_path / "b.yaml", MODELS)
        assert server.residency._used_bytes() == before
        assert _states(client)["attention"] == "resident"    # not evicted for a phantom


def test_a_late_eviction_reload_never_unloads_the_model_added_back_since(tmp_path):
    """An eviction reload of depthwise is held while a reload removes it and a second one
    adds it back; the held load ends first, then the second reload's load of the same key
    runs, and the late load's cleanup must leave that one alone."""
    with serving(MODELS, limits_extra={"device_memory_mb": BUDGET_MB}) as (server, endpoint):
        backend = server.backend
        gate, entered, load = threading.Event(), threading.Event(), backend.load
        calls = []

        def held_load(model, *args, **kwargs):
            calls.append(model)
            if model == "depthwise" and calls.count("depthwise") == 1:
                entered.set()
                gate.wait(CLIENT_TIMEOUT_S)
            return load(model, *args, **kwargs)
        backend.load = held_load
        asker = threading.Thread(target=_infer_quietly, args=(endpoint, "depthwise"))
        asker.start()
        assert entered.wait(CLIENT_TIMEOUT_S)         # the eviction reload is under way
        assert _reload(server, endpoint, tmp_path / "a.yaml", MODELS[:2]) is not None
        _drained(server, "depthwise")
        second: list = []
        adder = threading.Thread(target=lambda: second.append(
            _reload(server, endpoint, tmp_path / "b.yaml", MODELS)))
        adder.start()
        time.sleep(0.1)                               # it waits on the load lock
        server.engine.call_soon(lambda: time.sleep(0.5))   # the engine thread busy a while
        time.sleep(0.05)
        gate.set()
        adder.join(CLIENT_TIMEOUT_S)
        asker.join(CLIENT_TIMEOUT_S)
        assert second and second[0] is not None
        assert "depthwise" in backend._slices
        with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
            client.infer("depthwise", example_input("depthwise", 1))


def _infer_quietly(endpoint: str, model: str) -> None:
    with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        try:
            client.infer(model, example_input(model, 0))
        except EdgeschedError:
            pass              # answered: removed while it waited
