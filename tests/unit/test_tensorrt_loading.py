"""The TensorRT backend against the fake CUDA stack: loading engines and sliced models, and
when the backend is (not) available."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgesched.backends import create_backend, resolve_backend_name
from edgesched.backends.tensorrt import TensorRTBackend
from edgesched.errors import BackendUnavailable, ModelLoadError
from edgesched.types import BackendName, Launch, TensorSpec
from tests.fakes_cuda import write_engine
from tests.imported import loaded_by
from tests.unit.tensorrt_helpers import MODEL, inputs, one_line, run_engine, two_slice_model  # noqa: F401

# --- loading ------------------------------------------------------------------------------------

def test_a_single_engine_file_with_a_dynamic_batch(cuda, tmp_path):
    fake = cuda.install()
    path = write_engine(tmp_path / "net.plan", "net", {"img": ("float32", (-1, 3))},
                        {"score": ("float32", (-1, 3), "img", 0.5),
                         "count": ("int32", (-1, 3), "img", 2)})
    backend = cuda.make(streams=1)
    loaded = backend.load("net", path, 1)
    assert loaded.num_slices == 1
    assert loaded.inputs == (TensorSpec("img", "float32", (None, 3)),)
    assert loaded.outputs == (TensorSpec("score", "float32", (None, 3)),
                              TensorSpec("count", "int32", (None, 3)))
    img = np.arange(15, dtype=np.float32).reshape(5, 3)
    backend.stage(1, "net", {"img": img})
    backend.launch(Launch(1, "net", 0, 0))
    (done,) = backend.poll(1.0)
    assert done.error is None
    out = backend.fetch(1)
    np.testing.assert_array_equal(out["score"], img + 0.5)
    assert out["count"].dtype == np.int32 and out["count"].shape == (5, 3)
    assert fake.gpu.named("set_input_shape")[0].args[1:] == ("img", (5, 3))


def test_each_engine_file_is_deserialized_once(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    backend.load("a", model, 1)
    backend.load("b", model, 1)
    assert len(fake.gpu.named("deserialize_cuda_engine")) == 2
    assert len(fake.gpu.contexts) == 4               # still one per (model slice, instance)


def test_an_engine_that_does_not_deserialize_names_the_file_and_the_cause(cuda, tmp_path):
    cuda.install(trt_version="10.3.0")
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m", trt_major=8)      # built by another TensorRT
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, model, 1)
    line = one_line(info.value)
    assert str(model / "slice_00.engine") in line
    assert "another TensorRT version or another GPU" in line and "edgesched build" in line
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"\x00not an engine")
    with pytest.raises(ModelLoadError, match="garbage.engine"):
        backend.load("g", garbage, 1)


def test_a_slice_without_an_engine_says_to_build_on_the_device(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m", engines=False)
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, model, 1)
    line = one_line(info.value)
    assert "slice_00.onnx" in line and "edgesched build" in line and "on the device" in line
    (model / "slice_00.engine").unlink(missing_ok=True)
    two_slice_model(tmp_path / "n")
    (tmp_path / "n" / "slice_01.engine").unlink()
    with pytest.raises(ModelLoadError, match="slice_01.engine"):
        backend.load(MODEL, tmp_path / "n", 1)


def test_an_onnx_file_or_unknown_path_is_refused(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="edgesched build"):
        backend.load("m", tmp_path / "m.onnx", 1)
    with pytest.raises(ModelLoadError, match="no such file"):
        backend.load("m", tmp_path / "absent.engine", 1)


# --- availability --------------------------------------------------------------------------------

def test_no_driver_api_is_a_one_line_backend_unavailable(cuda):
    fake = cuda.install(cuda_python=None, libcuda=False)
    with pytest.raises(BackendUnavailable) as info:
        TensorRTBackend(2)
    assert "libcuda.so.1" in one_line(info.value)
    assert fake.gpu.retains == 0                      # the primary context was given back


def test_without_pycuda_the_backend_is_unavailable(cuda, monkeypatch):
    cuda.install()
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailable, match="pycuda"):
        TensorRTBackend(1)


def test_create_backend_and_auto_pick_tensorrt_when_it_is_importable(cuda):
    fake = cuda.install()
    assert resolve_backend_name(BackendName.AUTO) is BackendName.TENSORRT
    backend = create_backend(BackendName.TENSORRT, streams=2)
    try:
        assert isinstance(backend, TensorRTBackend) and backend.num_streams == 2
    finally:
        backend.close()
    assert fake.gpu.retains == 0


def test_the_module_imports_without_tensorrt_pycuda_or_cuda():
    loaded = loaded_by("import edgesched, edgesched.backends.tensorrt\n"
                       "import edgesched.backends.tensorrt.cuda_streams\n"
                       "import edgesched.backends.tensorrt.calibrator, edgesched.commands.build")
    assert not {"tensorrt", "pycuda", "cuda", "onnxruntime"} & loaded


