"""`slices: auto`: parsed from workload files, and sized from solo times (pure: hand-made
solo times, no device)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from edgesched.commands.workload import (
    AUTO,
    AUTO_MIN_SLICES,
    MAX_SLICES,
    Arrival,
    Workload,
    WorkloadModel,
    auto_slices,
    load_workload,
)
from edgesched.errors import ConfigError
from edgesched.types import Priority

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT


def model(name: str, priority: Priority, slices="auto", slo_ms: float = 33.0,
          arrival: Arrival | None = None) -> WorkloadModel:
    return WorkloadModel(name, Path("x.onnx"), slices, slo_ms, priority,
                         arrival or Arrival("closed", concurrency=1))


def workload(*models: WorkloadModel) -> Workload:
    return Workload("orin-nano", 10.0, 1, models, "test")


def test_best_effort_slices_fit_the_shortest_realtime_model():
    cam = model("cam", RT, 4, arrival=Arrival("periodic", fps=30))
    w = workload(cam, model("vgg", BE, slo_ms=1000), model("small", BE, slo_ms=1000))
    counts = auto_slices(w, {"cam": 1000.0, "vgg": 9500.0, "small": 300.0})
    # target = min(0.5 x (33 - 1) ms, 1 ms) = 1 ms: 9.5 ms in 10 slices; small ones get the floor
    assert counts == {"vgg": 10, "small": AUTO_MIN_SLICES}


def test_a_tight_slack_sets_the_target_and_the_count_is_capped():
    cam = model("cam", RT, 2, slo_ms=5.0)
    counts = auto_slices(workload(cam, model("long", BE)), {"cam": 4000.0, "long": 50_000.0})
    assert counts == {"long": MAX_SLICES}     # 0.5 ms slices would need 100


def test_the_frame_period_counts_when_shorter_than_the_objective():
    slow = model("cam", RT, 1, slo_ms=1000.0, arrival=Arrival("periodic", fps=100))
    counts = auto_slices(workload(slow, model("be", BE)), {"cam": 8000.0, "be": 8000.0})
    assert counts == {"be": 8}                # 0.5 x (10 - 8) ms = 1 ms slices


def test_realtime_auto_models_get_the_minimum_and_fixed_counts_are_kept():
    w = workload(model("cam", RT), model("fixed", BE, 3), model("be", BE))
    counts = auto_slices(w, {"cam": 2000.0, "fixed": 1e6, "be": 100.0})
    assert counts == {"cam": AUTO_MIN_SLICES, "be": AUTO_MIN_SLICES}


def test_without_realtime_models_only_the_minimum_applies():
    counts = auto_slices(workload(model("be", BE)), {"be": 1e6})
    assert counts == {"be": AUTO_MIN_SLICES}


def test_workload_files_take_auto(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"\0")
    data = {"device": "orin-nano", "duration_s": 1, "seed": 0, "models": [
        {"name": "m", "path": "a.onnx", "slices": "auto", "slo_ms": 10, "priority": "realtime",
         "arrival": {"kind": "periodic", "fps": 30}}]}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    assert load_workload(tmp_path / "w.yaml").models[0].slices == AUTO
    data["models"][0]["slices"] = "many"
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"models\[0\]\.slices.*from 1 to 16 or 'auto'"):
        load_workload(tmp_path / "w.yaml")


def test_simulate_resolves_auto_from_the_cost_model():
    from edgesched.commands.simulate import slice_counts
    from edgesched.paths import shipped
    cam = dataclasses.replace(model("det", RT, 4, arrival=Arrival("periodic", fps=30)),
                              path=shipped("engines/workloads/detector.onnx"))
    vgg = dataclasses.replace(model("vgg", BE, slo_ms=1000),
                              path=shipped("engines/workloads/vgg.onnx"))
    counts = slice_counts(workload(cam, vgg))
    assert counts["det"] == 4 and AUTO_MIN_SLICES <= counts["vgg"] <= MAX_SLICES
