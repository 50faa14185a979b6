"""The one element-type table: its numbers and strings checked against the libraries they come
from, its lookups, and the backends and model files that read through it."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgesched import dtypes
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.slicing import slice_model
from edgesched.serve import wire
from tests import fakes_cuda
from tests.models import EXAMPLES

ONNX_NAMES = {"float32": "FLOAT", "float16": "FLOAT16", "float64": "DOUBLE", "int8": "INT8",
              "uint8": "UINT8", "int16": "INT16", "uint16": "UINT16", "int32": "INT32",
              "uint32": "UINT32", "int64": "INT64", "uint64": "UINT64", "bool": "BOOL"}


def test_the_table_is_the_wire_dtypes_and_numpy_agrees():
    assert dtypes.NAMES == wire.WIRE_DTYPES == set(ONNX_NAMES)
    assert len(dtypes.TYPES) == len(dtypes.NAMES)
    for t in dtypes.TYPES:
        assert np.dtype(t.name).name == t.name and np.dtype(t.name).itemsize == t.itemsize
        assert t.np_dtype == np.dtype(t.name)


def test_onnx_enum_values_match_onnx():
    for t in dtypes.TYPES:
        assert t.onnx == getattr(TensorProto, ONNX_NAMES[t.name]), t
        assert helper.tensor_dtype_to_np_dtype(t.onnx) == t.np_dtype
    for value, name in dtypes.ONNX_UNSERVED.items():
        if hasattr(TensorProto, name):           # the newest types are absent from older onnx
            assert getattr(TensorProto, name) == value, name


def test_ort_type_strings_match_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    # One Identity per type: the session reports each input's type string as ORT spells it.
    inputs = [helper.make_tensor_value_info(f"in_{t.name}", t.onnx, [1]) for t in dtypes.TYPES]
    outputs = [helper.make_tensor_value_info(f"out_{t.name}", t.onnx, [1]) for t in dtypes.TYPES]
    nodes = [helper.make_node("Identity", [f"in_{t.name}"], [f"out_{t.name}"])
             for t in dtypes.TYPES]
    model = helper.make_model(helper.make_graph(nodes, "types", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reported = {arg.name[3:]: arg.type for arg in session.get_inputs()}
    assert reported == {t.name: t.ort for t in dtypes.TYPES}


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_tensorrt_names_match_the_fake_datatype(monkeypatch, version):
    trt = fakes_cuda.install(monkeypatch, trt_version=version).tensorrt
    for t in dtypes.TYPES:
        if t.tensorrt is None:
            continue
        member = getattr(trt.DataType, t.tensorrt, None)
        if member is None:                  # INT64: TensorRT 10.x only
            assert (t.name, version) == ("int64", "8.6.1")
            continue
        assert dtypes.from_tensorrt(member) is t
        assert np.dtype(trt.nptype(member)) == t.np_dtype     # the real API's answer agrees
    with pytest.raises(dtypes.UnsupportedDtype, match="TensorRT type FP8"):
        dtypes.from_tensorrt(trt.DataType.FP8)


def test_lookups_by_each_spelling():
    f32 = dtypes.by_name("float32")
    assert (f32.itemsize, f32.onnx, f32.ort, f32.tensorrt) == (4, 1, "tensor(float)", "FLOAT")
    assert dtypes.from_numpy(np.float32) is dtypes.from_numpy(np.dtype("<f4")) is f32
    assert dtypes.from_onnx(TensorProto.FLOAT) is dtypes.from_ort("tensor(float)") is f32
    assert dtypes.from_tensorrt("DataType.HALF") is dtypes.by_name("float16")   # str() form
    assert dtypes.by_name("float64").tensorrt is None


@pytest.mark.parametrize("lookup, value, names", [
    (dtypes.by_name, "object", "dtype 'object'"),
    (dtypes.by_name, ["float32"], "dtype ['float32']"),
    (dtypes.from_numpy, np.complex64, "numpy dtype complex64"),
    (dtypes.from_numpy, np.dtype(">f4"), "numpy dtype >f4"),       # not native byte order
    (dtypes.from_numpy, "no-such-type", "dtype 'no-such-type'"),
    (dtypes.from_onnx, TensorProto.STRING, "ONNX element type STRING"),
    (dtypes.from_onnx, TensorProto.BFLOAT16, "ONNX element type BFLOAT16"),
    (dtypes.from_onnx, 999, "ONNX element type 999"),
    (dtypes.from_ort, "tensor(string)", "ONNX Runtime type tensor(string)"),
    (dtypes.from_tensorrt, "DataType.BF16", "TensorRT type BF16"),
], ids=["object", "list", "complex", "big-endian", "garbage", "string", "bfloat16", "999",
        "ort-string", "trt-bf16"])
def test_unsupported_types_raise_one_line_naming_them(lookup, value, names):
    with pytest.raises(dtypes.UnsupportedDtype) as raised:
        lookup(value)
    message = str(raised.value)
    assert names in message and "\n" not in message and "float32" in message
    assert isinstance(raised.value, ValueError)


def test_dtypes_imports_only_numpy():
    tree = ast.parse(Path(dtypes.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "dataclasses", "numpy"}


# --- the readers that go through it ---------------------------------------------------------

def _string_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_sim_backend_refuses_an_unserved_type_naming_file_and_tensor(tmp_path):
    from edgesched.backends.sim import SimBackend
    path = _string_model(tmp_path / "strings.onnx")
    with pytest.raises(ModelLoadError) as raised:
        SimBackend("orin-agx", streams=1).load("s", path, 1)
    assert str(path) in str(raised.value) and "'s'" in str(raised.value)
    assert "STRING" in str(raised.value)


def test_the_ort_backend_refuses_an_unserved_type(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    backend = OnnxRuntimeBackend(streams=1)
    try:
        with pytest.raises(ModelLoadError, match=r"'s'.*tensor\(string\)"):
            backend.load("s", _string_model(tmp_path / "strings.onnx"), 1)
    finally:
        backend.close()


def test_slicing_refuses_an_unserved_model_type_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError, match="model tensor 's'.*STRING"):
        slice_model(_string_model(tmp_path / "strings.onnx"), 1, out)
    assert not out.exists()


def test_a_manifest_with_an_unserved_dtype_does_not_load(tmp_path):
    from edgesched.modelfiles.manifest import read_manifest
    sliced = tmp_path / "m"
    slice_model(EXAMPLES / "convnet.onnx", 2, sliced)
    text = (sliced / "manifest.json").read_text()
    (sliced / "manifest.json").write_text(text.replace('"float32"', '"complex64"', 1))
    with pytest.raises(ModelLoadError, match=r"inputs\[0\]: dtype 'complex64'"):
        read_manifest(sliced)


def test_the_tensorrt_backend_refuses_an_engine_type_numpy_cannot_hold(monkeypatch, tmp_path):
    from edgesched.backends.tensorrt import TensorRTBackend
    fakes_cuda.install(monkeypatch)
    path = fakes_cuda.write_engine(tmp_path / "net.plan", "net", {"x": ("float32", (1, 4))},
                                   {"y": ("bfloat16", (1, 4), "x", 1.0)})
    backend = TensorRTBackend(1)
    try:
        with pytest.raises(ModelLoadError, match="'y'.*TensorRT type BF16"):
            backend.load("net", path, 1)
    finally:
        backend.close()
