"""Bad model files and bad `edgesched build` arguments are one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgesched.commands import cli
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.manifest import read_manifest
from edgesched.modelfiles.slicing import load_onnx, slice_model
from tests import graphs

# --- errors ---------------------------------------------------------------------------------

def bad_files(tmp_path) -> dict[str, Path]:
    good = graphs.tiny().model.SerializeToString()
    files = {"missing": tmp_path / "nope.onnx", "text": tmp_path / "notes.onnx",
             "truncated": tmp_path / "cut.onnx", "empty": tmp_path / "empty.onnx",
             "directory": tmp_path / "dir.onnx"}
    files["text"].write_text("this is not\nan onnx model\n")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["empty"].write_bytes(b"")
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("what", ["missing", "text", "truncated", "empty", "directory"])
def test_bad_model_files_are_one_line_model_load_errors(tmp_path, what):
    path = bad_files(tmp_path)[what]
    for call in (lambda: load_onnx(path), lambda: slice_model(path, 2, tmp_path / "out")):
        with pytest.raises(ModelLoadError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(path) in message, message
    assert not (tmp_path / "out").exists()


def cli_run(capsys, *args) -> tuple[int, str, str]:
    try:
        code = cli.main(["build", *args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT absent, even on a machine that has it (find_spec -> None, import fails)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.mark.parametrize("what", ["missing", "text", "truncated"])
def test_cli_build_bad_model_path(tmp_path, capsys, no_tensorrt, what):
    path = bad_files(tmp_path)[what]
    line = one_line(*cli_run(capsys, str(path), "--slices", "2", "--out", str(tmp_path / "o")))
    assert str(path) in line


@pytest.mark.parametrize("value, words", [("0", "--slices"), ("x", "--slices"),
                                          ("-3", "--slices"), ("65", "--slices")])
def test_cli_build_bad_slice_count(saved, tmp_path, capsys, no_tensorrt, value, words):
    _, path = saved("tiny")
    line = one_line(*cli_run(capsys, str(path), "--slices", value, "--out", str(tmp_path / "o")))
    assert words in line and value in line
    assert not (tmp_path / "o").exists()


def test_cli_build_dla_without_fp16_is_a_usage_error(saved, tmp_path, capsys, no_tensorrt):
    # DLA runs FP16/INT8 only. BUG: without TensorRT the check never runs: the build slices,
    # says "build their engines on the device with the same command", and exits 0; the user
    # learns of the mistake only on the device.
    _, path = saved("residual")
    line = one_line(*cli_run(capsys, str(path), "--slices", "2", "--out", str(tmp_path / "o"),
                             "--dla", "0"))
    assert "--fp16" in line


def test_cli_build_without_tensorrt_slices_and_says_engines_come_later(saved, tmp_path, capsys,
                                                                        no_tensorrt):
    _, path = saved("residual")
    out_dir = tmp_path / "built"
    code, out, err = cli_run(capsys, str(path), "--slices", "3", "--out", str(out_dir),
                             "--name", "chain")
    assert code == 0, err
    assert "TensorRT is not importable" in out and "on the device" in out
    assert "chain: 3 slices" in out
    assert (out_dir / "manifest.json").is_file()
    assert sorted(p.name for p in out_dir.glob("slice_*.onnx")) == \
        ["slice_00.onnx", "slice_01.onnx", "slice_02.onnx"]
    assert not list(out_dir.glob("*.engine"))
    manifest = read_manifest(out_dir)
    assert manifest.model == "chain" and len(manifest.slices) == 3
    assert all(entry.engine is None for entry in manifest.slices)


def test_cli_build_on_a_model_without_compute_nodes_does_not_crash(tmp_path, capsys,
                                                                   no_tensorrt):
    # Every output is a constant: nothing to slice. BUG: plan_slices raises a bare ValueError
    # (np.argmax of an empty sequence) that escapes cli.main as a traceback.
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
            np.ones((2, 2), np.float32), "c"))], "g",
        [helper.make_tensor_value_info("x", 1, [1, 4])],
        [helper.make_tensor_value_info("y", 1, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "const.onnx"))
    code, out, err = cli_run(capsys, str(tmp_path / "const.onnx"), "--slices", "2",
                             "--out", str(tmp_path / "o"))
    if code != 0:
        one_line(code, out, err)
