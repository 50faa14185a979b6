"""Drift on the simulated device: its clocks drop mid-run; the engine notices, once.

A camera model at 30 fps and a best-effort model at 5 rps run for 40 simulated seconds on a
simulated Orin Nano. The profile is measured first, through launches only (as calibrate does).
At 15 s the device slows by 1.6x (what a lower GPU clock does to a compute-bound net). Every
figure here is simulated time.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path

import numpy as np
import pytest

from edgesched.backends.sim import SimBackend
from edgesched.engine import Engine, Submission
from edgesched.sched import make_policy
from edgesched.sched.drift import Drift, likely_cause
from edgesched.types import Launch, ModelInfo, Priority

ROOT = Path(__file__).resolve().parents[2]
SLOW_AT_S, FACTOR, DURATION_S = 15.0, 1.6, 40.0


def measured_solo_us(backend: SimBackend, model: str, slices: int, runs: int = 5) -> tuple:
    """Each slice run alone `runs` times on stream 0: the median, in microseconds."""
    out = []
    for index in range(slices):
        times = []
        for _ in range(runs):
            backend.stage(0, model, {})
            backend.launch(Launch(0, model, index, 0))
            (done,) = backend.poll(10.0)
            backend.release(0)
            times.append(done.finished_s - done.started_s)
        out.append(statistics.median(times) * 1e6)
    return tuple(out)


def run(slow: bool, caplog) -> tuple[Drift, list[logging.LogRecord], float]:
    backend = SimBackend("orin-nano", streams=2, seed=3)
    models = {}
    for name, path, slo_ms, prio in (
            ("camera", "engines/examples/convnet_sliced", 50.0, Priority.REALTIME),
            ("tagger", "engines/workloads/classifier.onnx", 500.0, Priority.BEST_EFFORT)):
        loaded = backend.load(name, ROOT / path, 1)
        models[name] = ModelInfo(name, loaded.inputs, loaded.outputs, loaded.num_slices,
                                 slo_ms, prio, 1)
    drift = Drift({m: measured_solo_us(backend, m, info.num_slices)
                   for m, info in models.items()})
    meta = {"gpu_freq_mhz": 625.0, "emc_freq_mhz": 2133.0, "nvpmodel": "15W"}

    def cause(model: str) -> str | None:
        # What a telemetry reading would say at the time: the GPU clock fell with the speed.
        clock = 625.0 / FACTOR if slow and backend.now() >= SLOW_AT_S else 625.0
        return likely_cause(meta, {"gpu_freq_mhz": clock, "emc_freq_mhz": 2133.0,
                                   "nvpmodel": "15W", "temps_c": {"gpu": 55.0}})

    results: list = []
    engine = Engine(backend, models, make_policy("priority"), queue_depth=64,
                    on_result=results.append, clock=backend.now, drift=drift,
                    drift_cause=cause)
    if slow:
        backend.slow_down(FACTOR, at_s=backend.now() + SLOW_AT_S)
    start = backend.now()
    # Tagger requests arrive between camera frames (offset 3.5 frames), so both run alone:
    # only slices that ran alone are compared with the profile.
    arrivals = sorted([(start + i / 30, "camera") for i in range(int(DURATION_S * 30))]
                      + [(start + 0.117 + i / 5, "tagger") for i in range(int(DURATION_S * 5))])
    inputs = {"camera": {"image": np.zeros((1, 3, 96, 96), np.float32)},
              "tagger": {"image": np.zeros((1, 3, 224, 224), np.float32)}}
    i = 0
    with caplog.at_level(logging.INFO, logger="edgesched.engine"):
        while backend.now() < start + DURATION_S:
            now = backend.now()
            while i < len(arrivals) and arrivals[i][0] <= now:
                engine.submit(Submission(arrivals[i][1], inputs[arrivals[i][1]], arrivals[i][0]))
                i += 1
            next_s = arrivals[i][0] if i < len(arrivals) else start + DURATION_S
            engine.step(max(next_s - now, 0.0))
    return drift, [r for r in caplog.records if r.name == "edgesched.engine"], start


def test_steady_clocks_show_no_drift(caplog):
    drift, records, _ = run(False, caplog)
    snap = drift.snapshot()
    for model, d in snap.items():
        assert d["samples"] > 20, model
        assert d["ratio"] == pytest.approx(1.0, abs=0.1), model
        assert not d["drifting"]
    assert not [r for r in records if "profile" in r.getMessage()]


def test_a_clock_drop_mid_run_is_detected_once_with_its_cause(caplog):
    drift, records, start = run(True, caplog)
    snap = drift.snapshot()
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    drifting = [w for w in warnings if "x the profile's time" in w]
    # Both models slowed; each is reported exactly once however long it lasts.
    assert {m for m in snap if snap[m]["drifting"]} == {"camera", "tagger"}
    assert len(drifting) == 2, warnings
    for d in snap.values():
        assert d["ratio"] == pytest.approx(FACTOR, rel=0.1)
        assert all(r == pytest.approx(FACTOR, rel=0.15) for r in d["slices"])
        # The ratio left the band within a few frames of the change, and was reported once it
        # had stayed out for the sustain time (10 s), not before.
        assert start + SLOW_AT_S <= d["outside_since_s"] < start + SLOW_AT_S + 2.0
        assert d["cause"] == "GPU clock 625 -> 391 MHz"
    for w in drifting:
        assert "likely cause: GPU clock 625 -> 391 MHz" in w and "recalibrate" in w
