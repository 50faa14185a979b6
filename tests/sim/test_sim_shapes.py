"""A dynamic-shape model on the simulated Jetson: costed at its shapes, refused without them.

Every latency here is simulated (the simulator's own ground truth on an Orin Nano spec).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import pytest
import yaml

from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SPECS, slice_work
from edgesched.commands.simulate import simulate
from edgesched.commands.workload import load_workload
from edgesched.modelfiles.slicing import slice_model
from edgesched.shapes import ShapeError, ShapeRange
from edgesched.types import Launch
from tests.models import build_dynamic_convnet

SPEC = SPECS["orin-nano"]
RANGE = ShapeRange((1, 3, 320, 320), (1, 3, 640, 640), (8, 3, 640, 640))


def fixed(size: int, batch: int = 1) -> dict[str, ShapeRange]:
    return {"image": ShapeRange.fixed_at((batch, 3, size, size))}


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    return build_dynamic_convnet(tmp_path_factory.mktemp("dyn") / "det.onnx")


def solo_ms(backend: SimBackend, model: str, request_id: int, inputs: dict) -> float:
    """One request's slices run back to back on stream 1; simulated ms."""
    backend.stage(request_id, model, inputs)
    total = 0.0
    for index in range(len(backend._work[model])):
        backend.launch(Launch(request_id, model, index, 1))
        (done,) = backend.poll(10.0)
        total += done.finished_s - done.started_s
    return total * 1e3


def test_slice_work_grows_with_the_shape(dynamic):
    model = onnx.load(str(dynamic))
    ms = {size: slice_work(model, SPEC, fixed(size)).duration_us / 1e3 for size in (320, 640)}
    assert 3.0 < ms[640] / ms[320] < 4.5, ms
    with pytest.raises(ShapeError):
        slice_work(model, SPEC, {})


def test_loading_a_dynamic_model_without_shapes_is_one_line(dynamic):
    with pytest.raises(ShapeError) as e:
        SimBackend("orin-nano", 2).load("det", dynamic, 1)
    assert str(e.value) == (
        "model 'det': input 'image' has dynamic dimensions [?, 3, ?, ?]; give its shape with "
        "`shapes: {image: [?, 3, ?, ?]}` (a size for each ?) on the model in the config or "
        "workload file")


def test_a_sliced_directory_is_costed_with_its_manifest_shapes(dynamic, tmp_path):
    whole = SimBackend("orin-nano", 2, noise_sigma=0.0)
    whole.load("whole", dynamic, 1, shapes={"image": RANGE})
    manifest, _ = slice_model(dynamic, 3, tmp_path / "s", shapes={"image": RANGE})
    sliced = SimBackend("orin-nano", 2, noise_sigma=0.0)
    assert sliced.load("sliced", manifest.directory, 1).num_slices == 3   # no shapes given
    one = sum(w.duration_us for w in whole._work["whole"])
    three = sum(w.duration_us for w in sliced._work["sliced"])
    assert three == pytest.approx(one, rel=0.1)      # the same work, cut in three


def test_a_request_in_the_range_runs_and_answers_at_its_own_shape(dynamic, tmp_path):
    manifest, _ = slice_model(dynamic, 3, tmp_path / "s", shapes={"image": RANGE})
    backend = SimBackend("orin-nano", 2, noise_sigma=0.0)
    backend.load("det", manifest.directory, 1)
    times = {}
    for rid, batch in enumerate((1, 4, 1), start=1):
        image = np.zeros((batch, 3, 640, 640), np.float32)
        times.setdefault(batch, []).append(solo_ms(backend, "det", rid, {"image": image}))
        assert backend.fetch(rid)["logits"].shape == (batch, 10)
    assert times[1][0] == pytest.approx(times[1][1])          # opt: the loaded work
    # batch 4: 4x the work, a little more time as its activations outgrow the L2
    assert 3.5 < times[4][0] / times[1][0] < 5.5, times
    assert backend._request_shapes == {}


def write_workload(tmp_path, path, shapes=None, slices=3, name="w.yaml"):
    model = {"name": "det", "path": str(path), "slices": slices, "slo_ms": 33,
             "priority": "realtime", "arrival": {"kind": "periodic", "fps": 30}}
    if shapes:
        model["shapes"] = shapes
    (tmp_path / name).write_text(yaml.safe_dump(
        {"device": "orin-nano", "duration_s": 2, "seed": 1, "models": [model]}))
    return load_workload(tmp_path / name)


@pytest.mark.parametrize("slices", [1, 3])
def test_simulate_refuses_a_dynamic_model_without_shapes(dynamic, tmp_path, slices):
    workload = write_workload(tmp_path, dynamic, slices=slices)
    with pytest.raises(ShapeError) as e:
        simulate(workload, ["fifo"])
    assert str(e.value).endswith(f"under models[0] in {tmp_path / 'w.yaml'}")
    assert "'det'" in str(e.value) and "'image'" in str(e.value)


def test_simulate_latency_grows_with_the_workload_shape(dynamic, tmp_path):
    p50 = {}
    for size in (320, 640):
        workload = write_workload(tmp_path, dynamic, {"image": [1, 3, size, size]},
                                  name=f"w{size}.yaml")
        assert workload.models[0].shapes == fixed(size)
        result = simulate(workload, ["fifo"])
        assert result["simulated"]
        model = result["policies"]["fifo"]["models"]["det"]
        assert model["completed"] == 60 and model["rejected"] == 0
        p50[size] = model["p50_ms"]
    assert 3.0 < p50[640] / p50[320] < 4.5, p50


def test_simulate_runs_a_range_at_opt(dynamic, tmp_path):
    ranged = write_workload(tmp_path, dynamic, {"image": RANGE.to_json()}, name="r.yaml")
    at_opt = write_workload(tmp_path, dynamic, {"image": [1, 3, 640, 640]}, name="o.yaml")
    runs = [simulate(w, ["fifo"])["policies"]["fifo"]["models"]["det"] for w in (ranged, at_opt)]
    assert runs[0]["p50_ms"] == pytest.approx(runs[1]["p50_ms"])


def test_a_workload_shape_for_a_missing_input_is_one_line(dynamic, tmp_path):
    workload = write_workload(tmp_path, dynamic, {"img": [1, 3, 320, 320]})
    with pytest.raises(ShapeError, match="model 'det' has no input 'img'"):
        simulate(dataclasses.replace(workload, duration_s=1), ["fifo"])


def test_estimates_skip_a_model_without_shapes_and_say_how(dynamic, tmp_path, caplog):
    from edgesched.config import parse_config
    from edgesched.profiles import estimate_profile

    def config(shapes):
        entry = {"name": "det", "path": str(dynamic), "slo_ms": 33}
        return parse_config({"device": {"backend": "sim"}, "scheduler": {"policy":
                                                                          "interference"},
                             "models": [entry | ({"shapes": shapes} if shapes else {})]},
                            "c.yaml", tmp_path)
    small = estimate_profile(config({"image": [1, 3, 320, 320]}))
    big = estimate_profile(config({"image": [1, 3, 640, 640]}))
    ratio = big.demands["det"][0].duration_us / small.demands["det"][0].duration_us
    assert 3.0 < ratio < 4.5
    with caplog.at_level(logging.WARNING, logger="edgesched.profiles"):
        none = estimate_profile(config(None))
    assert "det" not in none.demands
    assert any("no cost-model estimate for det" in r.message and "models[0] in c.yaml"
               in r.message for r in caplog.records)


def test_simulate_on_the_command_line_stops_with_one_line(dynamic, tmp_path, capsys):
    from edgesched.commands.cli import main
    write_workload(tmp_path, dynamic)
    assert main(["simulate", "--workload", str(tmp_path / "w.yaml"), "--policy", "fifo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "edgesched: error: model 'det': input 'image' has dynamic dimensions [?, 3, ?, ?]")
