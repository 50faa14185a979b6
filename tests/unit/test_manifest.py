"""The sliced-model directory format: round trip, and one ModelLoadError line per defect."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgesched.errors import ModelLoadError
from edgesched.modelfiles.manifest import (
    MANIFEST_NAME,
    Manifest,
    SliceEntry,
    read_manifest,
    write_manifest,
)
from edgesched.types import TensorSpec


def three_slices(directory: Path) -> Manifest:
    """image -> s0 -> h0 -> s1 -> h1 -> s2 -> (logits, boxes); s2 also reads the image."""
    directory.mkdir(parents=True, exist_ok=True)
    slices = (
        SliceEntry(0, "slice_0.onnx", ("image",), ("h0",), {"flops": 1000, "bytes": 64}),
        SliceEntry(1, "slice_1.onnx", ("h0",), ("h1",), {"flops": 2000, "bytes": 32,
                                                         "est_us": 12.5}),
        SliceEntry(2, "slice_2.onnx", ("h1", "image"), ("logits", "boxes"), {},
                   engine="slice_2.engine"),
    )
    for s in slices:
        (directory / s.file).write_bytes(b"onnx")
    return Manifest("detector", "models/detector.onnx",
                    (TensorSpec("image", "float32", (1, 3, None, None)),),
                    (TensorSpec("logits", "float32", (1, 10)),
                     TensorSpec("boxes", "float16", (None, 4))),
                    slices, directory)


def raw(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def rewrite(directory: Path, data: object) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


def load_error(directory: Path, *fragments: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        read_manifest(directory)
    message = str(caught.value)
    assert "\n" not in message
    assert str(directory / MANIFEST_NAME) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- round trip ---------------------------------------------------------------------------

def test_write_then_read_is_the_same_manifest(tmp_path):
    manifest = three_slices(tmp_path / "detector")
    path = write_manifest(manifest)
    assert path == tmp_path / "detector" / MANIFEST_NAME and path.is_file()
    back = read_manifest(tmp_path / "detector")
    assert back == manifest
    assert [s.cost for s in back.slices] == [s.cost for s in manifest.slices]
    assert back.slices[2].engine == "slice_2.engine" and back.slices[0].engine is None
    assert back.slice_path(back.slices[1]) == tmp_path / "detector" / "slice_1.onnx"


def test_the_dla_core_of_a_slice_round_trips_and_is_absent_for_the_gpu(tmp_path):
    manifest = three_slices(tmp_path)
    slices = (*manifest.slices[:2], dataclasses.replace(manifest.slices[2], dla_core=1))
    write_manifest(dataclasses.replace(manifest, slices=slices))
    assert [s.get("dla_core") for s in raw(tmp_path)["slices"]] == [None, None, 1]
    assert [s.dla_core for s in read_manifest(tmp_path).slices] == [None, None, 1]


def test_read_accepts_a_string_path(tmp_path):
    manifest = three_slices(tmp_path / "m")
    write_manifest(manifest)
    assert read_manifest(str(tmp_path / "m")) == manifest


def test_written_file_is_plain_json_in_the_documented_shape(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    assert set(data) == {"model", "source", "inputs", "outputs", "slices"}
    assert data["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, None, None]}]
    assert data["slices"][0] == {"index": 0, "file": "slice_0.onnx", "inputs": ["image"],
                                 "outputs": ["h0"], "cost": {"flops": 1000, "bytes": 64}}
    assert "engine" not in data["slices"][1] and data["slices"][2]["engine"] == "slice_2.engine"


def test_negative_dimensions_read_as_dynamic(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["inputs"][0]["shape"] = [1, 3, -1, -1]
    rewrite(tmp_path, data)
    assert read_manifest(tmp_path).inputs[0].shape == (1, 3, None, None)


def test_source_and_cost_are_optional(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    del data["source"]
    for s in data["slices"]:
        del s["cost"]
    rewrite(tmp_path, data)
    manifest = read_manifest(tmp_path)
    assert manifest.source == "" and all(s.cost == {} for s in manifest.slices)


# --- defects ------------------------------------------------------------------------------

def test_missing_manifest(tmp_path):
    load_error(tmp_path, "cannot read")


def test_missing_directory(tmp_path):
    load_error(tmp_path / "nope", "cannot read")


@pytest.mark.parametrize("text", ["", "{", "{'model': 'x'}", "[1, 2", "\n\n  nope"])
def test_invalid_json(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text)
    load_error(tmp_path, "not valid JSON", "line ")


def test_not_utf8(tmp_path):
    (tmp_path / MANIFEST_NAME).write_bytes(b'{"model": "\xff\xfe"}')
    load_error(tmp_path)


@pytest.mark.parametrize("data", [[], "x", {"slices": []}, {"model": 3}])
def test_top_level_must_be_an_object_with_a_model_name(tmp_path, data):
    rewrite(tmp_path, data)
    load_error(tmp_path, "'model'")


@pytest.mark.parametrize("slices", [[], None, {}, "slice_0.onnx"], ids=repr)
def test_empty_or_missing_slices(tmp_path, slices):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"] = slices
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices must be a non-empty list")


@pytest.mark.parametrize("where, value, fragment", [
    ("inputs", [], "inputs must be a non-empty list"),
    ("outputs", None, "outputs must be a non-empty list"),
    ("inputs", [{"name": "image", "dtype": "float32"}], "inputs[0] needs name, dtype and shape"),
    ("outputs", ["logits"], "outputs[0] needs name, dtype and shape"),
    ("inputs", [{"name": "image", "dtype": "float32", "shape": [1, "3"]}],
     "inputs[0].shape must hold integers"),
])
def test_bad_tensor_specs(tmp_path, where, value, fragment):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data[where] = value
    rewrite(tmp_path, data)
    load_error(tmp_path, fragment)


@pytest.mark.parametrize("index", [1, None, "0", -1])
def test_wrong_slice_index(tmp_path, index):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][0]["index"] = index
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices[0].index must be 0")


def test_slices_out_of_order(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][1], data["slices"][2] = data["slices"][2], data["slices"][1]
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices[1].index must be 1")


@pytest.mark.parametrize("change, fragment", [
    ({"file": None}, "slices[1].file must be a file name"),
    ({"inputs": []}, "slices[1].inputs must be a non-empty list of tensor names"),
    ({"outputs": ["h1", 2]}, "slices[1].outputs must be a non-empty list of tensor names"),
    ({"engine": 5}, "slices[1].engine must be a file name"),
    ({"dla_core": -1}, "slices[1].dla_core must be a DLA core number"),
    ({"dla_core": True}, "slices[1].dla_core must be a DLA core number"),
])
def test_bad_slice_fields(tmp_path, change, fragment):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][1].update(change)
    rewrite(tmp_path, data)
    load_error(tmp_path, fragment)


def test_slice_entry_not_an_object(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][1] = "slice_1.onnx"
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices[1] must be an object")


def test_slice_reads_a_tensor_no_earlier_slice_produced(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][1]["inputs"] = ["h0", "h2"]
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices[1] reads 'h2', which no earlier slice produces")


def test_slice_reads_a_tensor_a_later_slice_produces(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][0]["inputs"] = ["h1"]
    rewrite(tmp_path, data)
    load_error(tmp_path, "slices[0] reads 'h1'")


def test_model_output_produced_by_no_slice(tmp_path):
    write_manifest(three_slices(tmp_path))
    data = raw(tmp_path)
    data["slices"][2]["outputs"] = ["logits"]
    rewrite(tmp_path, data)
    load_error(tmp_path, "model output 'boxes' is produced by no slice")


def test_missing_slice_file(tmp_path):
    write_manifest(three_slices(tmp_path))
    (tmp_path / "slice_1.onnx").unlink()
    load_error(tmp_path, "slices[1].file 'slice_1.onnx' does not exist")


def test_slice_file_that_is_a_directory(tmp_path):
    write_manifest(three_slices(tmp_path))
    (tmp_path / "slice_2.onnx").unlink()
    (tmp_path / "slice_2.onnx").mkdir()
    load_error(tmp_path, "slices[2].file 'slice_2.onnx' does not exist")


def test_errors_are_model_load_errors_with_no_chained_cause(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ModelLoadError) as caught:
        read_manifest(tmp_path)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
