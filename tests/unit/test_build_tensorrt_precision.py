"""FP16 and INT8 builds per TensorRT version: the flags where they exist (8.6, 10.x; deprecated
from 10.12), strongly typed TensorRT 11 without them, Q/DQ models vs calibration."""
from __future__ import annotations

import pytest

from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine
from edgesched.commands import cli
from edgesched.commands.build import build
from tests.unit.build_tensorrt_helpers import fp16_model, one_line, qdq_model, save


def flags(fake) -> list[str]:
    return [c[1].name for c in fake.named("config.set_flag")]


@pytest.mark.parametrize("version, deprecated", [("8.6.1", False), ("10.3.0", False),
                                                 ("10.12.0", True), ("10.13.2", True)])
def test_fp16_sets_the_builder_flag_where_it_exists(fake_trt, residual_onnx, tmp_path, version,
                                                    deprecated):
    fake = fake_trt(version=version)
    report = build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(fp16=True))
    assert flags(fake) == ["FP16", "FP16"]
    assert "(FP16)" in report
    assert ("deprecates BuilderFlag.FP16" in report) == deprecated


def test_fp16_on_tensorrt_11_refuses_an_fp32_model_in_one_line(fake_trt, residual_onnx,
                                                               tmp_path):
    fake = fake_trt(version="11.0.0")
    assert not hasattr(fake.module.BuilderFlag, "FP16")
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions(fp16=True))
    line = one_line(info.value)
    assert "TensorRT 11.0.0" in line and "strongly typed" in line and "FP32 weights" in line
    assert "convert it to FP16" in line
    assert not fake.named("build_serialized_network")


def test_fp16_on_tensorrt_11_builds_an_fp16_model_as_it_is(fake_trt, tmp_path):
    fake = fake_trt(version="11.0.0")
    report = build(save(fp16_model(), tmp_path / "half.onnx"), 1, tmp_path / "o",
                   options=BuildOptions(fp16=True))
    assert flags(fake) == [] and fake.named("create_network") == [("create_network", 0)]
    assert "FP16 comes from the model's own FP16 types" in report


@pytest.mark.parametrize("version, flag", [("8.6.1", ["INT8"]), ("10.3.0", ["INT8"]),
                                           ("11.0.0", [])])
def test_int8_builds_a_qdq_model_without_a_calibrator(fake_trt, tmp_path, version, flag):
    fake = fake_trt(version=version)
    report = build(save(qdq_model(), tmp_path / "qdq.onnx"), 1, tmp_path / "o",
                   options=BuildOptions(int8=True))
    assert flags(fake) == flag
    assert not fake.named("config.int8_calibrator")
    assert "INT8 from Q/DQ" in report


def test_int8_without_qdq_needs_calibration_data_before_anything_is_written(
        fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    with pytest.raises(EngineBuildError) as info:
        build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(int8=True))
    assert "no Q/DQ nodes" in one_line(info.value) and "--calibration-data" in str(info.value)
    assert not (tmp_path / "o").exists() and not fake.calls


def test_a_qdq_model_with_calibration_data_is_refused(fake_trt, tmp_path):
    fake_trt()
    with pytest.raises(EngineBuildError, match="explicitly quantized") as info:
        build(save(qdq_model(), tmp_path / "qdq.onnx"), 1, tmp_path / "o",
              options=BuildOptions(int8=True), calibration_data=tmp_path)
    one_line(info.value)


def test_calibration_data_without_int8_is_status_2(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt()
    code = cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(tmp_path / "o"),
                     "--calibration-data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "add --int8" in err


def test_dla_takes_int8_as_well_as_fp16(fake_trt, tmp_path):
    fake = fake_trt(dla_cores=2)
    report = build(save(qdq_model(), tmp_path / "qdq.onnx"), 1, tmp_path / "o",
                   options=BuildOptions(int8=True, dla_core=1))
    assert sorted(flags(fake)) == ["GPU_FALLBACK", "INT8"]
    assert fake.named("config.DLA_core") == [("config.DLA_core", 1)]
    assert "for DLA core 1" in report
    with pytest.raises(EngineBuildError, match="--dla needs --fp16 or --int8"):
        BuildOptions(dla_core=0)
