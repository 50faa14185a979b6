"""The TensorRT backend on a real device: engines built here by TensorRT, served in the primary
CUDA context. Runs on a Jetson (or any CUDA GPU) with tensorrt and pycuda importable; skipped
cleanly everywhere else (no tensorrt, no pycuda, or no CUDA device).
"""
from __future__ import annotations

import ctypes
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt")
cuda = pytest.importorskip("pycuda.driver")


def _cuda_device() -> bool:
    try:
        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # pycuda raises its own error types when there is no driver/device
        return False


pytestmark = pytest.mark.skipif(not _cuda_device(), reason="no CUDA device")

from edgesched.backends.tensorrt import BuildOptions, TensorRTBackend  # noqa: E402
from edgesched.commands.build import build  # noqa: E402
from edgesched.engine import Engine, Submission  # noqa: E402
from edgesched.errors import InvalidInput, ModelLoadError  # noqa: E402
from edgesched.sched import make_policy  # noqa: E402
from edgesched.shapes import parse_text  # noqa: E402
from edgesched.types import Launch, ModelInfo, Priority  # noqa: E402

RNG = np.random.default_rng(3)
W1 = (RNG.standard_normal((16, 32)) / 4).astype(np.float32)
B1 = RNG.standard_normal(32).astype(np.float32)
W2 = (RNG.standard_normal((32, 8)) / 6).astype(np.float32)
B2 = RNG.standard_normal(8).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W1 + B1, 0) @ W2 + B2


@pytest.fixture(scope="module")
def sliced(tmp_path_factory) -> Path:
    """A two-layer MLP, sliced in two, with a TensorRT engine per slice built on this device."""
    root = tmp_path_factory.mktemp("trt")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(a, n) for n, a in
         (("w1", W1), ("b1", B1), ("w2", W2), ("b2", B2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "mlp.onnx"))
    report = build(root / "mlp.onnx", 2, root / "mlp", "mlp")
    assert "TensorRT" in report.splitlines()[-1], report
    return root / "mlp"


def mlp(path: Path, batch: int | str) -> Path:
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])],
        [numpy_helper.from_array(a, n) for n, a in
         (("w1", W1), ("b1", B1), ("w2", W2), ("b2", B2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ranged(tmp_path_factory) -> Path:
    """The MLP with a dynamic batch, built for batches 1..8 with two profiles (instances)."""
    root = tmp_path_factory.mktemp("trt-range")
    build(mlp(root / "dyn.onnx", "N"), 2, root / "dyn", "dyn",
          options=BuildOptions(profiles=2), shapes=dict([parse_text("x:1x16/4x16/8x16")]))
    return root / "dyn"


def _current_context() -> int:
    """The driver's current context on this thread (0: none)."""
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    current = ctypes.c_void_p()
    assert lib.cuCtxGetCurrent(ctypes.byref(current)) == 0
    return current.value or 0


@pytest.fixture
def backend():
    made = TensorRTBackend(2)
    yield made
    made.close()


def test_a_sliced_model_matches_numpy_through_the_engine(backend, sliced):
    loaded = backend.load("mlp", sliced, 2)
    assert loaded.num_slices == 2
    info = ModelInfo("mlp", loaded.inputs, loaded.outputs, 2, 1000.0, Priority.REALTIME, 2,
                     str(sliced))
    results: dict = {}
    engine = Engine(backend, {"mlp": info}, make_policy("greedy"), queue_depth=64,
                    on_result=lambda r: results.__setitem__(r.reply_to, r))
    xs = [RNG.standard_normal((1, 16)).astype(np.float32) for _ in range(16)]
    for tag, x in enumerate(xs):
        engine.submit(Submission("mlp", {"x": x}, time.monotonic(), reply_to=tag))
    deadline = time.monotonic() + 30
    while len(results) < len(xs):
        assert time.monotonic() < deadline
        engine.step(0.05)
    for tag, x in enumerate(xs):
        assert results[tag].error is None, results[tag].error
        # TF32 may be on for FP32 matmuls (Ampere and later): a loose tolerance
        np.testing.assert_allclose(results[tag].outputs["y"], reference(x), rtol=2e-2,
                                   atol=2e-2)


def test_streams_have_priorities_and_memory_fits_the_device(backend):
    high, low = backend.stream_priorities
    assert high <= low                         # lower number = higher priority
    dev = cuda.Device(0)
    integrated = bool(dev.get_attribute(cuda.device_attribute.INTEGRATED))
    assert backend.zero_copy == (integrated and bool(
        dev.get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY)))


def test_two_instances_of_a_slice_run_side_by_side(backend, sliced):
    backend.load("mlp", sliced, 2)
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    for rid, stream in ((1, 0), (2, 1)):
        backend.stage(rid, "mlp", {"x": x})
        backend.launch(Launch(rid, "mlp", 0, stream))
    done = []
    deadline = time.monotonic() + 10
    while len(done) < 2 and time.monotonic() < deadline:
        done += backend.poll(0.5)
    assert sorted(c.launch.request_id for c in done) == [1, 2]
    assert all(c.error is None for c in done)
    for rid in (1, 2):
        backend.launch(Launch(rid, "mlp", 1, rid - 1))
    done = []
    while len(done) < 2 and time.monotonic() < deadline:
        done += backend.poll(0.5)
    for rid in (1, 2):
        np.testing.assert_allclose(backend.fetch(rid)["y"], reference(x), rtol=2e-2, atol=2e-2)


def test_a_garbage_engine_is_a_model_load_error(backend, tmp_path):
    path = tmp_path / "garbage.engine"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="garbage.engine"):
        backend.load("g", path, 1)


def test_close_stops_the_waiter_threads():
    made = TensorRTBackend(3)
    made.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgesched-trt-wait-")]


def test_two_instances_of_a_batch_range_run_at_once_on_their_own_profiles(backend, ranged):
    backend.load("dyn", ranged, 2)
    xs = {1: RNG.standard_normal((3, 16)).astype(np.float32),
          2: RNG.standard_normal((8, 16)).astype(np.float32)}
    deadline = time.monotonic() + 10
    for slice_index in (0, 1):
        for rid in xs:
            if slice_index == 0:
                backend.stage(rid, "dyn", {"x": xs[rid]})
            backend.launch(Launch(rid, "dyn", slice_index, rid - 1))
        done = []
        while len(done) < 2 and time.monotonic() < deadline:
            done += backend.poll(0.5)
        assert sorted(c.launch.request_id for c in done) == [1, 2]
        assert all(c.error is None for c in done), [c.error for c in done]
    for rid, x in xs.items():
        np.testing.assert_allclose(backend.fetch(rid)["y"], reference(x), rtol=2e-2, atol=2e-2)
    with pytest.raises(InvalidInput, match="outside the range"):
        backend.stage(3, "dyn", {"x": np.zeros((9, 16), np.float32)})
    with pytest.raises(ModelLoadError, match="--instances 3"):
        backend.load("dyn3", ranged, 3)


def test_engines_are_tagged_with_this_tensorrt_and_gpu(sliced):
    import tensorrt
    major, minor = cuda.Device(0).compute_capability()
    for tag in sorted(sliced.glob("*.engine.json")):
        raw = json.loads(tag.read_text())
        assert raw["tensorrt"] == tensorrt.__version__
        assert raw["compute_capability"] == f"{major}.{minor}"
        assert raw["command"].startswith("edgesched build ")


def test_close_and_device_report_leave_no_context_current():
    from edgesched.backends.tensorrt import device_report
    assert _current_context() == 0
    made = TensorRTBackend(2)
    made.close()
    device_report()
    assert _current_context() == 0
    assert cuda.Context.get_current() is None
