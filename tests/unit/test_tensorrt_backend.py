"""The TensorRT backend against fake tensorrt / pycuda / CUDA driver modules (tests/fakes_cuda/).

The fakes record every call and check the CUDA contract (primary context pushed on every CUDA
thread, priority non-blocking streams, every tensor bound before a launch, events after each
launch waited with a blocking synchronize, the right kind of memory); each test ends by
asserting the fake saw no violation. Fake engines compute `output = input + constant`, so a
two-slice model (slice 0 adds 1, slice 1 adds 10) returns x + 11 through the real Engine.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgesched.backends import create_backend, resolve_backend_name
from edgesched.backends.base import Doorbell
from edgesched.backends.tensorrt import TensorRTBackend
from edgesched.engine import Engine, Submission
from edgesched.errors import BackendUnavailable, ModelLoadError, ServerError
from edgesched.modelfiles.manifest import Manifest, SliceEntry, write_manifest
from edgesched.sched import make_policy
from edgesched.types import BackendName, Launch, ModelInfo, Priority, TensorSpec
from tests import fakes_cuda
from tests.fakes_cuda import write_engine

MODEL = "twostep"
WAITER = "edgesched-trt-wait-"


@pytest.fixture
def cuda(monkeypatch):
    """install(**fakes_cuda.install options) -> FakeCuda; backends(...) made through `make`
    are closed at the end, then the fake must have seen no contract violation."""
    installed: list[fakes_cuda.FakeCuda] = []
    backends: list[TensorRTBackend] = []

    class Kit:
        def install(self, **options) -> fakes_cuda.FakeCuda:
            installed.append(fakes_cuda.install(monkeypatch, **options))
            return installed[-1]

        def make(self, streams: int = 3) -> TensorRTBackend:
            backends.append(TensorRTBackend(streams))
            return backends[-1]

    yield Kit()
    for backend in backends:
        backend.close()
    for fake in installed:
        fake.gpu.check_quiescent()
        assert fake.gpu.violations == []
        assert fake.gpu.unbalanced() == {}          # every push popped, on every thread


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


def two_slice_model(directory: Path, *, batch: int | None = 1, engines: bool = True,
                    trt_major: int = 10) -> Path:
    """x[batch,4] -> slice 0 (h = x + 1) -> slice 1 (y = h + 10); batch None: dynamic."""
    directory.mkdir(parents=True, exist_ok=True)
    dim = -1 if batch is None else batch
    entries = []
    for index, (src, dst, add) in enumerate([("x", "h", 1.0), ("h", "y", 10.0)]):
        (directory / f"slice_{index:02d}.onnx").write_bytes(b"")   # the manifest's ONNX file
        engine = f"slice_{index:02d}.engine" if engines else None
        if engine:
            write_engine(directory / engine, f"slice_{index:02d}",
                         {src: ("float32", (dim, 4))}, {dst: ("float32", (dim, 4), src, add)},
                         trt_major)
        entries.append(SliceEntry(index, f"slice_{index:02d}.onnx", (src,), (dst,), {}, engine))
    write_manifest(Manifest(MODEL, "twostep.onnx", (TensorSpec("x", "float32", (batch, 4)),),
                            (TensorSpec("y", "float32", (batch, 4)),), tuple(entries),
                            directory))
    return directory


def run_engine(backend, model_dir: Path, inputs: list[np.ndarray], *, instances: int = 2,
               policy: str = "greedy", timeout_s: float = 5.0) -> dict:
    loaded = backend.load(MODEL, model_dir, instances)
    info = ModelInfo(MODEL, loaded.inputs, loaded.outputs, loaded.num_slices, 1000.0,
                     Priority.BEST_EFFORT, instances, str(model_dir))
    results: dict = {}
    engine = Engine(backend, {MODEL: info}, make_policy(policy), queue_depth=64,
                    on_result=lambda r: results.__setitem__(r.reply_to, r))
    for tag, x in enumerate(inputs):
        engine.submit(Submission(MODEL, {"x": x}, time.monotonic(), reply_to=tag))
    deadline = time.monotonic() + timeout_s
    while len(results) < len(inputs):
        assert time.monotonic() < deadline, f"only {len(results)} of {len(inputs)} answered"
        engine.step(0.05)
    return results


def inputs(n: int, batch: int = 1) -> list[np.ndarray]:
    return [np.full((batch, 4), float(k), np.float32) + np.arange(4, dtype=np.float32)
            for k in range(n)]


_STREAM_ARG = {"execute_async_v3": 2, "cuEventRecord": 2, "cuMemcpyHtoDAsync": 4,
               "cuMemcpyDtoHAsync": 4}


def stream_of(call: fakes_cuda.Call) -> int:
    """The stream a recorded launch / record / copy went to."""
    return call.args[_STREAM_ARG[call.op]]


# --- end to end through the Engine -------------------------------------------------------------

def test_engine_runs_a_two_slice_model_zero_copy_on_an_integrated_gpu(cuda, tmp_path):
    fake = cuda.install(integrated=True)
    backend = cuda.make(streams=3)
    assert backend.zero_copy
    xs = inputs(6)
    results = run_engine(backend, two_slice_model(tmp_path / "m"), xs)
    for tag, x in enumerate(xs):
        assert results[tag].error is None
        np.testing.assert_array_equal(results[tag].outputs["y"], x + 11)
    gpu = fake.gpu
    # one execution context per (slice, instance), made in the primary context
    assert Counter(c.engine.name for c in gpu.contexts) == {"slice_00": 2, "slice_01": 2}
    executes = gpu.named("execute_async_v3")
    assert len(executes) == 12
    for call in executes:
        kinds = {name: gpu.device[ptr].kind for name, ptr in call.args[3].items()}
        assert kinds == ({"x": "mapped", "h": "device"} if call.args[0] == "slice_00"
                         else {"h": "device", "y": "mapped"})
    assert not gpu.named("cuMemcpyHtoDAsync") and not gpu.named("cuMemcpyDtoHAsync")
    # an event after every launch, each waited once by a waiter thread, never polled
    records, syncs = gpu.named("cuEventRecord"), gpu.named("cuEventSynchronize")
    assert len(records) == len(syncs) == 12
    assert all(c.thread.startswith(WAITER) for c in syncs)
    assert not gpu.named("cuEventQuery")
    assert all(e.flags == fakes_cuda.BLOCKING_SYNC | fakes_cuda.DISABLE_TIMING
               for e in gpu.events.values())
    # the blocking wait goes through ctypes (releases the GIL), creation through cuda-python
    assert fake.vias("cuEventSynchronize") == {"libcuda": 12}
    assert fake.vias("cuStreamCreateWithPriority") == {"cuda-python": 3}


def test_discrete_gpu_uses_device_memory_and_copies_on_the_launch_stream(cuda, tmp_path):
    fake = cuda.install(integrated=False)
    backend = cuda.make(streams=2)
    assert not backend.zero_copy
    xs = inputs(5)
    results = run_engine(backend, two_slice_model(tmp_path / "m"), xs)
    for tag, x in enumerate(xs):
        np.testing.assert_array_equal(results[tag].outputs["y"], x + 11)
    gpu = fake.gpu
    assert not [a for a in gpu.live_allocations() if a.kind == "mapped"]
    per_stream: dict[int, list[str]] = {}
    for call in gpu.calls:
        if call.op in ("execute_async_v3", "cuEventRecord", "cuMemcpyHtoDAsync",
                       "cuMemcpyDtoHAsync"):
            what = call.args[0] if call.op == "execute_async_v3" else call.op
            per_stream.setdefault(stream_of(call), []).append(what)
    # per stream, each launch is: [copy in] execute [copy out] record, in that order
    launches = []
    for ops in per_stream.values():
        text = " ".join(ops)
        launches += [s.strip() for s in text.split("cuEventRecord") if s.strip()]
    assert Counter(launches) == {"cuMemcpyHtoDAsync slice_00": 5,
                                 "slice_01 cuMemcpyDtoHAsync": 5}


def test_execute_failure_fails_only_that_request(cuda, tmp_path):
    fake = cuda.install()
    fake.gpu.fail_execute = lambda engine, ins: engine == "slice_01" and ins["h"][0, 0] == 3 + 1
    backend = cuda.make(streams=2)
    results = run_engine(backend, two_slice_model(tmp_path / "m"), inputs(5))
    assert isinstance(results[3].error, ServerError)
    assert "execute_async_v3" in one_line(results[3].error)
    assert results[3].outputs is None
    for tag in (0, 1, 2, 4):
        assert results[tag].error is None
        np.testing.assert_array_equal(results[tag].outputs["y"], inputs(5)[tag] + 11)


@pytest.mark.parametrize("layout, libcuda, via", [(None, True, "libcuda"),
                                                   ("legacy", False, "cuda-python"),
                                                   ("bindings", False, "cuda-python")])
def test_every_driver_binding_serves(cuda, tmp_path, layout, libcuda, via):
    fake = cuda.install(cuda_python=layout, libcuda=libcuda)
    backend = cuda.make(streams=2)
    results = run_engine(backend, two_slice_model(tmp_path / "m"), inputs(3))
    assert [results[t].outputs["y"][0, 0] for t in range(3)] == [11.0, 12.0, 13.0]
    for op in ("cuStreamCreateWithPriority", "cuEventRecord", "cuEventSynchronize"):
        assert set(fake.vias(op)) == {via}, op


# --- streams, context, threads -------------------------------------------------------------------

def test_streams_are_non_blocking_with_stream_0_at_the_greatest_priority(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=4)
    assert backend.stream_priorities == [-5, 0, 0, 0]
    created = fake.gpu.named("cuStreamCreateWithPriority")
    assert [c.args[1:] for c in created] == [(fakes_cuda.NON_BLOCKING, -5)] + \
        [(fakes_cuda.NON_BLOCKING, 0)] * 3
    run_engine(backend, two_slice_model(tmp_path / "m"), inputs(8), instances=4)
    ours = set(fake.gpu.streams)
    used = {c.args[2] for c in fake.gpu.named("execute_async_v3")}
    assert used <= ours and not used & set(fakes_cuda.DEFAULT_STREAMS)


def test_primary_context_is_pushed_on_every_cuda_thread_and_released(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=2)
    run_engine(backend, two_slice_model(tmp_path / "m"), inputs(2))
    backend.close()
    gpu = fake.gpu
    assert gpu.named("cuInit") and len(gpu.named("retain_primary_context")) == 1
    assert gpu.retains == 0 and gpu.named("ctx.detach") == [
        fakes_cuda.Call("ctx.detach", threading.current_thread().name, (True,))]
    pushers = {c.thread for c in gpu.named("ctx.push")}
    assert {f"{WAITER}0", f"{WAITER}1", threading.current_thread().name} <= pushers
    assert "pycuda.autoinit" not in sys.modules


def test_close_stops_the_waiters_and_frees_everything(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=3)
    run_engine(backend, two_slice_model(tmp_path / "m"), inputs(4))
    assert sum(t.name.startswith(WAITER) for t in threading.enumerate()) == 3
    backend.close()
    backend.close()                                   # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith(WAITER)]
    gpu = fake.gpu
    assert all(s.destroyed for s in gpu.streams.values())
    assert all(e.destroyed for e in gpu.events.values())
    assert gpu.live_allocations() == []


def test_instances_run_at_once_and_a_busy_slice_fails_only_its_launch(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=3)
    backend.load(MODEL, two_slice_model(tmp_path / "m"), 2)
    for rid in (1, 2, 3):
        backend.stage(rid, MODEL, {"x": inputs(4)[rid]})
    fake.gpu.hold()                                   # the GPU "runs" until release()
    for rid in (1, 2, 3):
        backend.launch(Launch(rid, MODEL, 0, rid - 1))
    busy = backend.poll(1.0)
    assert [c.launch.request_id for c in busy] == [3] and "busy" in busy[0].error
    launched = fake.gpu.named("execute_async_v3")
    assert len(launched) == 2 and launched[0].args[1] != launched[1].args[1]
    assert backend.poll(0.05) == []                   # still running
    fake.gpu.release()
    done = []
    while len(done) < 2:
        done += backend.poll(1.0)
    assert sorted(c.launch.request_id for c in done) == [1, 2]
    assert all(c.error is None and c.started_s <= c.finished_s for c in done)
    for rid in (1, 2, 3):
        backend.release(rid)


def test_a_ring_of_the_bound_doorbell_ends_a_waiting_poll(cuda):
    cuda.install()
    backend = cuda.make(streams=1)
    doorbell = Doorbell()
    backend.bind(doorbell)
    timer = threading.Timer(0.05, doorbell.ring)
    timer.start()
    start = time.monotonic()
    assert backend.poll(5.0) == []
    assert time.monotonic() - start < 2.0
    timer.join()


def test_a_request_released_while_running_is_freed_when_its_launch_ends(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=1)
    backend.load(MODEL, two_slice_model(tmp_path / "m"), 1)
    backend.stage(1, MODEL, {"x": inputs(1)[0]})
    fake.gpu.hold()
    backend.launch(Launch(1, MODEL, 0, 0))
    backend.release(1)                                # e.g. abort_all while it runs
    allocations = len(fake.gpu.named("alloc"))
    fake.gpu.release()
    (done,) = backend.poll(1.0)
    assert done.error is None
    backend.stage(2, MODEL, {"x": inputs(1)[0]})      # the same buffers come back from the pool
    backend.launch(Launch(2, MODEL, 0, 0))
    backend.poll(1.0)
    assert len(fake.gpu.named("alloc")) == allocations
    backend.release(2)


def test_a_synthetic_request_runs_any_slice_on_zeros(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    backend.load(MODEL, two_slice_model(tmp_path / "m"), 1)
    backend.stage(7, MODEL, {})                       # calibration's way: no tensors
    backend.launch(Launch(7, MODEL, 1, 0))            # slice 1 alone: h is zeros
    (done,) = backend.poll(1.0)
    assert done.error is None
    np.testing.assert_array_equal(backend.fetch(7)["y"], np.full((1, 4), 10.0, np.float32))


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
    code = ("import sys, edgesched, edgesched.backends.tensorrt, edgesched.backends.tensorrt.cuda_streams;"
            "bad = {'tensorrt', 'pycuda', 'pycuda.driver', 'cuda'} & set(sys.modules);"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])


# --- the fakes bite -----------------------------------------------------------------------------

def test_the_fakes_catch_contract_breaks(cuda, tmp_path):
    fake = cuda.install()
    gpu, drv = fake.gpu, fake.pycuda_driver
    with pytest.raises(ImportError):
        import pycuda.autoinit  # noqa: F401
    drv.Device(0).make_context()
    ctx = drv.Device(0).retain_primary_context()
    engine = fake.tensorrt.Runtime(fake.tensorrt.Logger())  # no context pushed
    ctx.push()
    engine = engine.deserialize_cuda_engine(fakes_cuda.engine_blob(
        "e", {"a": ("float32", (2,))}, {"b": ("float32", (2,), "a", 1)}))
    context = engine.create_execution_context()
    assert context.execute_async_v3(0) is False                   # the default stream
    stream = fake.cuda_python.cuStreamCreateWithPriority(1, 0)[1]
    assert context.execute_async_v3(int(stream)) is False          # no addresses set
    fake.cuda_python.cuEventCreate(0)                               # would spin
    drv.Context.pop()
    ctx.detach()
    found = "\n".join(gpu.violations)
    for text in ("pycuda.autoinit", "make_context", "Runtime() without", "default stream",
                 "no address", "BLOCKING_SYNC"):
        assert text in found, text
    gpu.violations.clear()


def test_device_report_for_selftest_names_the_gpu_sms_and_priorities(cuda):
    from edgesched.backends.tensorrt import device_report
    from edgesched.commands.selftest import _cuda
    fake = cuda.install(integrated=True)
    line = device_report()
    assert "Fake Orin" in line and "8 SMs" in line and "compute 8.7" in line
    assert "integrated" in line and "driver 12.2" in line and "priorities -5 (highest)" in line
    check = _cuda()
    assert check.ok and check.detail == device_report()
    assert fake.gpu.violations == []
