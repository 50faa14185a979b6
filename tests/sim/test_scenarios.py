"""Engine + simulator end to end: shipped workloads, shortened, deterministic by seed.

Every figure is simulated time, so ratios between policies are fair to assert on. Workloads
are cut to 2 simulated seconds (60 camera frames) to keep the suite fast.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import edgesched.commands.simulate as simulate_module
from edgesched.backends.sim import SimBackend
from edgesched.commands.simulate import format_report, simulate
from edgesched.commands.workload import Workload, load_workload
from edgesched.types import Priority

WORKLOADS = Path(__file__).resolve().parents[2] / "configs" / "workloads"
DURATION_S = 2.0
POLICIES = ["fifo", "greedy", "priority", "interference"]
MODEL_KEYS = {"p50_ms", "p99_ms", "throughput_rps", "slo_attainment", "completed", "rejected"}


def shortened(name: str, **changes) -> Workload:
    workload = load_workload(WORKLOADS / f"{name}.yaml")
    return dataclasses.replace(workload, duration_s=DURATION_S, **changes)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {name: simulate(shortened(name), POLICIES) for name in ("camera", "complementary")}


def realtime(workload: Workload) -> list[str]:
    return [m.name for m in workload.models if m.priority is Priority.REALTIME]


# --- the result's shape ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["camera", "complementary"])
def test_the_result_has_the_documented_shape(results, name):
    result = results[name]
    workload = shortened(name)
    assert result["simulated"] is True
    assert result["device"] == workload.device
    assert result["duration_s"] == DURATION_S and result["seed"] == workload.seed
    assert set(result["policies"]) == set(POLICIES)
    for policy, body in result["policies"].items():
        assert set(body) == {"models", "best_effort_work"}
        assert set(body["models"]) == {m.name for m in workload.models}
        assert body["best_effort_work"] > 0
        for model, m in body["models"].items():
            assert set(m) == MODEL_KEYS, (policy, model)
            assert isinstance(m["completed"], int) and isinstance(m["rejected"], int)
            assert m["completed"] > 0
            assert 0 < m["p50_ms"] <= m["p99_ms"]
            assert 0.0 <= m["slo_attainment"] <= 1.0
            assert m["throughput_rps"] == pytest.approx(m["completed"] / DURATION_S)
    assert set(result["solo"]) == set(realtime(workload))
    for m in result["solo"].values():
        assert set(m) == MODEL_KEYS and m["rejected"] == 0
    assert json.loads(json.dumps(result)) == result          # plain JSON values only


def test_every_camera_frame_is_answered(results):
    frames = round(30 * DURATION_S)
    for policy, body in results["camera"]["policies"].items():
        detector = body["models"]["detector"]
        assert detector["completed"] + detector["rejected"] == frames, policy
    assert results["camera"]["solo"]["detector"]["completed"] == frames


def test_the_report_says_simulated(results):
    text = format_report(results["camera"])
    assert text.startswith("SIMULATED")
    assert text.count("(simulated)") == len(POLICIES)
    for policy in POLICIES:
        assert f"policy {policy} (simulated)" in text
    assert "detector" in text and "classifier" in text


# --- determinism ----------------------------------------------------------------------------

def test_same_seed_same_result_another_seed_another(results):
    again = simulate(shortened("camera"), POLICIES)
    assert again == results["camera"]
    other = simulate(shortened("camera", seed=2), POLICIES)
    assert other["seed"] == 2
    assert other["policies"] != results["camera"]["policies"]


# --- fifo is one slice at a time -----------------------------------------------------------

class SpyBackend(SimBackend):
    """A SimBackend that remembers the most launches it ever ran at once."""

    made: list["SpyBackend"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.for_a_policy_run = kwargs.get("outputs") is False   # not the profiling backend
        self.most_at_once = 0
        SpyBackend.made.append(self)

    def launch(self, launch):
        super().launch(launch)
        self.most_at_once = max(self.most_at_once,
                                sum(1 for j in self._jobs.values() if j.launch is not None))


@pytest.mark.parametrize("policy, co_runs", [("fifo", False), ("greedy", True)])
def test_fifo_never_co_runs(monkeypatch, policy, co_runs):
    SpyBackend.made = []
    monkeypatch.setattr(simulate_module, "SimBackend", SpyBackend)
    workload = dataclasses.replace(shortened("camera"), duration_s=0.5)
    simulate(workload, [policy])
    runs = [b for b in SpyBackend.made if b.for_a_policy_run]
    assert len(runs) == 2                                     # the policy, and detector solo
    assert runs[1].most_at_once == 1                          # solo runs are fifo too
    if co_runs:
        assert runs[0].most_at_once > 1
    else:
        assert runs[0].most_at_once == 1


# --- what the interference policy is for ----------------------------------------------------

@pytest.mark.parametrize("name", ["camera", "complementary"])
def test_interference_keeps_realtime_at_solo_latency_and_does_more_best_effort_work(
        results, name):
    result = results[name]
    interference, fifo, greedy = (result["policies"][p] for p in ("interference", "fifo",
                                                                   "greedy"))
    for model in realtime(shortened(name)):
        solo_p99 = result["solo"][model]["p99_ms"]
        p99 = interference["models"][model]["p99_ms"]
        print(f"{name}/{model}: interference p99 {p99:.3f} ms = {p99 / solo_p99:.3f}x solo; "
              f"greedy {greedy['models'][model]['p99_ms'] / solo_p99:.2f}x; best-effort work "
              f"{interference['best_effort_work']:.3f} vs fifo {fifo['best_effort_work']:.3f}")
        assert p99 <= 1.15 * solo_p99
        assert greedy["models"][model]["p99_ms"] > p99
        assert interference["models"][model]["slo_attainment"] == 1.0
    assert interference["best_effort_work"] > fifo["best_effort_work"]


@pytest.mark.parametrize("name", ["camera", "complementary"])
def test_priority_streams_alone_do_not_keep_realtime_at_solo_latency(results, name):
    # The reason for a predictor: stream priority favours realtime blocks but cannot stop
    # best-effort work from taking the SMs and bandwidth first.
    result = results[name]
    for model in realtime(shortened(name)):
        assert result["policies"]["priority"]["models"][model]["p99_ms"] \
            > result["policies"]["interference"]["models"][model]["p99_ms"]
