"""Engine build failures (parse, build, deserialize) are one-line errors, status 2 on the CLI."""
from __future__ import annotations

import pytest

from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine
from edgesched.commands import cli
from tests.unit.build_tensorrt_helpers import one_line


def test_parse_failure_names_the_file_and_the_first_error(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt(parse_errors=[
        "In node 3 (importConv): UNSUPPORTED_NODE: Assertion failed: kernel rank\nmore detail",
        "In node 7 (importIf): second error"])
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    line = one_line(info.value)
    assert str(residual_onnx) in line and "UNSUPPORTED_NODE" in line
    assert "more detail" not in line and "second error" not in line
    assert not fake.named("build_serialized_network")


def test_parse_failure_without_parser_errors_is_still_one_line(fake_trt, residual_onnx,
                                                               tmp_path):
    fake_trt(parse_errors=[])
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert str(residual_onnx) in one_line(info.value)


def test_a_failed_build_is_a_one_line_engine_build_error(fake_trt, residual_onnx, tmp_path):
    fake_trt(build_fails=True)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert str(residual_onnx) in one_line(info.value)
    assert not (tmp_path / "x.engine").exists()
    assert not (tmp_path / "x.layers.json").exists()


def test_an_engine_that_does_not_deserialize_is_a_one_line_error(fake_trt, residual_onnx,
                                                                  tmp_path):
    # The message names the engine just built (x.engine), not a derived name.
    fake_trt(deserialize_fails=True)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    line = one_line(info.value)
    assert str(tmp_path / "x.engine") in line and "layers.engine" not in line, line


def test_failed_build_through_the_cli_is_status_2(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt(build_fails=True)
    code = cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "slice_00.onnx" in err
