"""Drift detection as data: ratios, the sustain time, one report per episode, likely causes."""
from __future__ import annotations

import pytest

from edgesched.sched.drift import Drift, describe, likely_cause


def feed(drift: Drift, ratio: float, start_s: float, end_s: float, step_s: float = 0.5,
         model: str = "m") -> list:
    events, t = [], start_s
    while t <= end_s + 1e-9:
        event = drift.observe(model, 0, 0.010 * ratio, t)   # profile: 10 ms
        if event is not None:
            events.append(event)
        t += step_s
    return events


def test_on_profile_times_nothing_is_reported():
    drift = Drift({"m": (10_000.0,)})
    assert feed(drift, 1.05, 0, 60) == []
    snap = drift.snapshot()["m"]
    assert snap["ratio"] == pytest.approx(1.05) and not snap["drifting"]
    assert snap["slices"] == [pytest.approx(1.05)] and snap["samples"] == 121


def test_sustained_drift_is_reported_once_after_the_sustain_time_then_its_end_once():
    drift = Drift({"m": (10_000.0,)}, threshold=0.2, sustain_s=10)
    assert feed(drift, 1.0, 0, 10) == []
    events = feed(drift, 1.5, 10.5, 40)
    assert len(events) == 1 and events[0].drifting
    assert 10.5 <= events[0].since_s <= 13            # the moving ratio crossed 1.2 quickly
    assert drift.snapshot()["m"]["drifting"]
    back = feed(drift, 1.0, 40.5, 60)
    assert len(back) == 1 and not back[0].drifting
    assert not drift.snapshot()["m"]["drifting"]


def test_a_short_excursion_is_not_drift():
    # The moving ratio lags ~16 samples behind (1.6 s at 10 samples/s) in coming back.
    drift = Drift({"m": (10_000.0,)}, sustain_s=10)
    assert feed(drift, 2.0, 0, 5, 0.1) == [] and feed(drift, 1.0, 5.1, 30, 0.1) == []
    assert feed(drift, 2.0, 30.1, 38, 0.1) == []       # the clock restarted at 30.1


def test_faster_than_the_profile_is_drift_too():
    drift = Drift({"m": (10_000.0,)}, sustain_s=2)
    (event,) = feed(drift, 0.5, 0, 10)
    assert event.drifting and event.ratio == pytest.approx(0.5, abs=0.05)


def test_unknown_models_and_slices_are_ignored():
    drift = Drift({"m": (10_000.0,)})
    assert drift.observe("other", 0, 1.0, 0) is None and drift.observe("m", 3, 1.0, 0) is None
    assert drift.snapshot()["m"]["ratio"] is None


def test_likely_causes_from_telemetry():
    meta = {"nvpmodel": "MAXN", "jetson_clocks": True, "gpu_freq_mhz": 1300.0,
            "emc_freq_mhz": 3199.0}
    assert likely_cause(meta, {**meta, "gpu_freq_mhz": 1290.0, "temps_c": {"gpu": 60}}) is None
    assert likely_cause(meta, {"nvpmodel": "15W", "jetson_clocks": False,
                               "gpu_freq_mhz": 612.0, "emc_freq_mhz": 2133.0,
                               "temps_c": {"gpu": 93.5, "cpu": 70}}) == (
        "power mode changed (MAXN -> 15W); jetson_clocks changed (True -> False); "
        "GPU clock 1300 -> 612 MHz; EMC clock 3199 -> 2133 MHz; "
        "near thermal throttling (gpu 94 C)")
    assert likely_cause({}, {"gpu_freq_mhz": 600}) is None       # nothing recorded to compare


def test_the_log_line_says_ratio_cause_and_advice():
    drift = Drift({"m": (10_000.0,)}, sustain_s=1)
    (event,) = feed(drift, 1.6, 0, 5)
    line = describe(event, "GPU clock 1300 -> 612 MHz", 0.2, 1)
    assert "'m'" in line and "1.6" in line and "likely cause: GPU clock" in line
    assert "recalibrate" in line
    assert "telemetry shows no cause" in describe(event, None, 0.2, 1)
