"""INT8 calibration: an entropy calibrator fed from a directory of .npy samples, slices after the
first fed the tensors crossing their cut (computed by ONNX Runtime), a cache per slice."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import helper

from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine
from edgesched.backends.tensorrt.calibrator import Calibration
from edgesched.commands import cli
from edgesched.commands.build import build
from edgesched.shapes import parse_text
from tests.unit.build_tensorrt_helpers import dynamic_model, one_line, save

INT8 = BuildOptions(int8=True)


def chain(tmp_path):
    """x[N, 4] -> Relu (y) -> Tanh (y2) -> Relu (y3): three slices, two cut tensors."""
    model = dynamic_model(("N",))
    model.graph.node.extend([helper.make_node("Tanh", ["y"], ["y2"]),
                             helper.make_node("Relu", ["y2"], ["y3"])])
    model.graph.output[0].name = "y3"
    return save(model, tmp_path / "dyn.onnx")


def samples(directory, count: int, batch: int = 2, seed: int = 0, **arrays):
    directory.mkdir(exist_ok=True)
    x = np.random.default_rng(seed).standard_normal((count * batch, 4)).astype(np.float32)
    for name, array in {"x": x, **arrays}.items():
        np.save(directory / f"{name}.npy", array)
    return x


def batches_of(fake, name: str) -> list[np.ndarray]:
    return [b[name].view(np.float32).reshape(2, 4) for b in fake.batches if name in b]


def test_every_slice_calibrates_on_its_own_inputs_and_writes_a_cache(fake_trt, tmp_path):
    fake = fake_trt()
    x = samples(tmp_path / "data", 5)
    report = build(chain(tmp_path), 3, tmp_path / "o", options=INT8,
                   shapes=dict([parse_text("x:2x4")]), calibration_data=tmp_path / "data")
    assert "INT8 calibrated on 5 samples" in report
    assert [c[1].name for c in fake.named("config.set_flag")] == ["INT8"] * 3
    assert fake.named("calibrator.batches") == [("calibrator.batches", 5)] * 3
    runs = [x[2 * i:2 * i + 2] for i in range(5)]
    for got, want in zip(batches_of(fake, "x"), runs):           # slice 0: the samples
        np.testing.assert_array_equal(got, want)
    for got, want in zip(batches_of(fake, "y"), runs):           # slice 1: relu(x), by ORT
        np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-6)
    for got, want in zip(batches_of(fake, "y2"), runs):          # slice 2: tanh(relu(x))
        np.testing.assert_allclose(got, np.tanh(np.maximum(want, 0)), rtol=1e-6)
    caches = sorted(p.name for p in (tmp_path / "o" / "calibration").iterdir())
    assert [c[:9] for c in caches] == ["slice_00-", "slice_01-", "slice_02-"]


def test_a_rebuild_reads_the_cache_and_new_samples_recalibrate(fake_trt, tmp_path):
    fake = fake_trt()
    model, data = chain(tmp_path), tmp_path / "data"
    samples(data, 3)
    args = dict(options=INT8, shapes=dict([parse_text("x:2x4")]), calibration_data=data)
    build(model, 2, tmp_path / "o", **args)
    fake.calls.clear()
    build(model, 2, tmp_path / "o", **args)
    assert fake.named("calibrator.read_calibration_cache") == \
        [("calibrator.read_calibration_cache", True)] * 2
    assert not fake.named("calibrator.batches")
    fake.calls.clear()
    samples(data, 4, seed=1)                                      # other samples: other caches
    build(model, 2, tmp_path / "o", **args)
    assert fake.named("calibrator.batches") == [("calibrator.batches", 4)] * 2
    assert len(list((tmp_path / "o" / "calibration").iterdir())) == 2


def test_a_range_calibrates_at_opt_with_a_calibration_profile(fake_trt, tmp_path):
    fake = fake_trt(version="10.12.0")
    samples(tmp_path / "data", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # 10.1+ warns on the calibrator API
        build(chain(tmp_path), 1, tmp_path / "o", options=INT8,
              shapes=dict([parse_text("x:1x4/2x4/8x4")]), calibration_data=tmp_path / "data")
    assert len(fake.named("config.set_calibration_profile")) == 1
    built = next(i for i, c in enumerate(fake.calls) if c[0] == "build_serialized_network")
    assert fake.index(("config.set_calibration_profile",)) < built
    assert len(batches_of(fake, "x")) == 3


@pytest.mark.parametrize("files, expected", [
    ({}, "no x.npy for input 'x', built at 2x4: an array (2N, 4)"),
    ({"x": np.zeros((6, 5), np.float32)}, "x.npy: shape (6, 5)"),
    ({"x": np.zeros((5, 4), np.float32)}, "x.npy: shape (5, 4)"),       # not a multiple of 2
    ({"x": np.zeros((4, 4)), "w": np.zeros(3)}, "w.npy: no model input is named 'w'"),
])
def test_calibration_data_that_does_not_fit_is_one_line(fake_trt, tmp_path, files, expected):
    fake = fake_trt()
    data = tmp_path / "data"
    data.mkdir()
    for name, array in files.items():
        np.save(data / f"{name}.npy", array)
    with pytest.raises(EngineBuildError) as info:
        build(chain(tmp_path), 2, tmp_path / "o", options=INT8,
              shapes=dict([parse_text("x:2x4")]), calibration_data=data)
    assert expected in one_line(info.value)
    assert not fake.named("build_serialized_network")


def test_inputs_with_different_sample_counts_are_refused(fake_trt, tmp_path):
    fake_trt()
    model = save(dynamic_model(("N",), two_inputs=True), tmp_path / "two.onnx")
    data = tmp_path / "data"
    samples(data, 3, z=np.zeros((2 * 4, 8), np.float32))
    with pytest.raises(EngineBuildError, match="different numbers of samples: x 3, z 4"):
        build(model, 1, tmp_path / "o", options=INT8,
              shapes=dict([parse_text("x:2x4"), parse_text("z:2x8")]), calibration_data=data)


def test_the_cli_takes_calibration_data(fake_trt, tmp_path, capsys):
    fake = fake_trt()
    samples(tmp_path / "data", 2)
    assert cli.main(["build", str(chain(tmp_path)), "--slices", "1", "--out",
                     str(tmp_path / "o"), "--shape", "x:2x4", "--int8", "--calibration-data",
                     str(tmp_path / "data")]) == 0
    assert "INT8 calibrated on 2 samples" in capsys.readouterr().out
    assert fake.named("calibrator.batches") == [("calibrator.batches", 2)]
    code = cli.main(["build", str(chain(tmp_path)), "--slices", "1", "--out",
                     str(tmp_path / "p"), "--shape", "x:2x4", "--int8", "--calibration-data",
                     str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a directory" in err


def test_a_bad_sample_fails_the_build_instead_of_ending_calibration_early(fake_trt, tmp_path):
    # TensorRT swallows a get_batch exception and calibrates on what it got so far
    fake = fake_trt()
    good = {"x": np.ones((2, 4), np.float32)}
    bad = {"x": np.ones((3, 4), np.float32)}
    calibration = Calibration([good, bad, good], tmp_path / "x.cache")
    with pytest.raises(EngineBuildError) as info:
        build_engine(chain(tmp_path), tmp_path / "x.engine", INT8,
                     dict([parse_text("x:2x4")]), calibration=calibration)
    assert "calibration sample 1" in one_line(info.value) and "(3, 4)" in str(info.value)
    assert fake.named("calibrator.batches") == [("calibrator.batches", 1)]
    assert not (tmp_path / "x.engine").exists() and not (tmp_path / "x.cache").exists()


def test_tensorrt_11_has_no_calibration(fake_trt, tmp_path):
    fake = fake_trt(version="11.0.0")
    samples(tmp_path / "data", 2)
    with pytest.raises(EngineBuildError) as info:
        build(chain(tmp_path), 1, tmp_path / "o", options=INT8,
              shapes=dict([parse_text("x:2x4")]), calibration_data=tmp_path / "data")
    line = one_line(info.value)
    assert "TensorRT 11.0.0 has no INT8 calibration" in line and "Q/DQ" in line
    assert not fake.named("build_serialized_network")
