"""Batches on the simulated Jetson: how a batch is costed (bigger grids fill idle SMs first),
what calibration measures per batch size, and a camera workload whose frames batch."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import yaml

from edgesched.backends import load_models
from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SPECS, slice_work
from edgesched.commands import simulate
from edgesched.commands.calibrate import calibrate, report
from edgesched.commands.measure_batch import batch_sizes, measure_batches
from edgesched.commands.workload import load_workload
from edgesched.config import ModelConfig, load_config
from edgesched.sched import batch_units
from edgesched.sched.profile import Profile
from edgesched.shapes import ShapeRange
from edgesched.types import BatchConfig, Priority
from tests.models import build_dynamic_convnet

ROOT = Path(__file__).resolve().parents[2]
DETECTOR = ROOT / "engines" / "batching" / "detector.onnx"
WORKLOAD = ROOT / "configs" / "workloads" / "cameras-batching.yaml"


def solo_us(model, device, rows, size):
    return slice_work(model, SPECS[device],
                      {"image": ShapeRange.fixed_at((rows, 3, size, size))}).duration_us


def test_a_batch_is_nearly_free_while_its_grids_fill_idle_sms(tmp_path):
    small = onnx.load(str(build_dynamic_convnet(tmp_path / "c.onnx")))
    # 32x32 images leave most of an Orin Nano's SMs idle: 4 cost little more than 1
    assert solo_us(small, "orin-nano", 4, 32) < 1.2 * solo_us(small, "orin-nano", 1, 32)
    # the detector's 384x384 grids fill them at batch 1: 4 frames cost nearly 4 frames
    detector = onnx.load(str(DETECTOR))
    one, four = (solo_us(detector, "orin-nano", n, 384) for n in (1, 4))
    assert 3.5 * one < four < 4 * one


def test_calibration_measures_latency_per_batch_size(tmp_path):
    backend = SimBackend("orin-nano", 3, seed=1, noise_sigma=0.0)
    entry = ModelConfig("det", DETECTOR, 33.0, Priority.REALTIME, 1, {"image": ShapeRange(
        (1, 3, 384, 384), (1, 3, 384, 384), (6, 3, 384, 384))}, BatchConfig(8))
    models = load_models(backend, [entry, dataclasses.replace(entry, name="alone", batch=None)])
    table = measure_batches(backend, models, runs=2)
    assert set(table) == {"det"} and sorted(table["det"]) == [1, 2, 4, 6]   # range max 6
    totals = {rows: sum(us) for rows, us in table["det"].items()}
    assert totals[1] < totals[2] < totals[4] < totals[6]
    assert totals[6] / 6 <= totals[1]                         # never slower per frame
    profile = Profile("orin-nano", {}, batch_us=table)
    again = Profile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again.batch_us == table
    assert again.batch_seconds()["det"][4] == pytest.approx(totals[4] / 1e6)


def test_batch_sizes_are_powers_of_two_then_the_limit():
    assert batch_sizes(1) == [1] and batch_sizes(4) == [1, 2, 4] and batch_sizes(6) == [1, 2, 4, 6]


def test_camera_frames_batch_and_every_frame_is_counted(tmp_path, monkeypatch):
    workload = dataclasses.replace(load_workload(WORKLOAD), duration_s=2.0)
    paths = simulate._prepare(workload, tmp_path)
    probe = SimBackend(workload.device, simulate.STREAMS, seed=workload.seed + 1)
    profile = simulate.measure_profile(probe, simulate._load(probe, workload, paths),
                                       workload.device, seed=workload.seed)
    assert sorted(profile.batch_us["detector"]) == [1, 2, 4]
    formed = []
    start = batch_units.Batches.start

    def counting(self, unit, state):
        formed.append(unit.total)
        return start(self, unit, state)
    monkeypatch.setattr(batch_units.Batches, "start", counting)
    result = simulate.run_policy(workload, paths, "fifo", profile)
    detector = result["detector"]
    assert formed and max(formed) <= 4
    assert detector["completed"] == 4 * 30 * 2 and detector["rejected"] == 0
    assert detector["slo_attainment"] == 1.0


def test_calibrate_stores_and_reports_latency_per_batch_size(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "device": {"backend": "sim", "sim_device": "orin-nano", "streams": 3},
        "telemetry": "none", "models": [{
            "name": "det", "path": str(DETECTOR), "slo_ms": 33, "priority": "realtime",
            "batch": {"max": 4}, "shapes": {"image": {
                "min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}}}]}))
    profile = calibrate(load_config(tmp_path / "c.yaml"), runs=2, pairs=4)
    assert sorted(profile.batch_us["det"]) == [1, 2, 4]
    assert profile.meta["models"]["det"]["batch"] == {"max": 4}
    assert "det batch latency (solo, all slices): 1 rows " in report(profile)
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").batch_us == profile.batch_us
