"""The primary CUDA context retained and released balanced on every thread (the backend,
device_report), and the fakes holding code to pycuda's, ctypes' and TensorRT's real contracts."""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from edgesched.backends.tensorrt import cuda_streams, device_report
from edgesched.backends.tensorrt.cuda_streams import CtypesDriver, CudaDriverError
from tests import fakes_cuda
from tests.unit.tensorrt_helpers import MODEL, inputs, run_engine, two_slice_model

# --- balanced on every thread ------------------------------------------------------------------

def test_a_backend_closed_on_another_thread_releases_and_leaves_nothing_pushed(cuda, tmp_path):
    # old: pycuda's detach on a thread other than the retaining one did nothing (a leak)
    fake = cuda.install()
    backend = cuda.make(streams=2)
    run_engine(backend, two_slice_model(tmp_path / "m"), inputs(2))
    closer = threading.Thread(target=backend.close, name="closer")
    closer.start()
    closer.join()
    assert fake.gpu.retains == 0 and fakes_cuda.check_balanced(fake.gpu) == []
    assert [c.thread for c in fake.gpu.named("cuDevicePrimaryCtxRelease")] == ["closer"]


def test_device_report_gives_its_retain_back(cuda):
    # old: retained and pushed/popped, never released
    fake = cuda.install()
    for _ in range(3):
        device_report()
    assert fake.gpu.retains == 0 and fakes_cuda.check_balanced(fake.gpu) == []
    assert len(fake.gpu.named("cuDevicePrimaryCtxRelease")) == 3


def test_the_old_release_sequence_leaves_the_context_pushed(cuda):
    # what close() did: pop, then detach (pycuda pushes to release and never pops)
    fake = cuda.install()
    drv = fake.pycuda_driver
    drv.init()
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    drv.Context.pop()
    ctx.detach()
    assert fake.gpu.retains == 0
    assert fake.gpu.unbalanced() == {threading.get_ident(): 1}
    assert fakes_cuda.check_balanced(fake.gpu) != []
    fake.cuda_python.cuCtxPopCurrent()             # what context.py does after detach
    assert fakes_cuda.check_balanced(fake.gpu) == []


def test_the_fake_pycuda_keeps_its_rules(cuda):
    fake = cuda.install()
    drv = fake.pycuda_driver
    with pytest.raises(drv.LogicError, match="initialization"):
        drv.Device(0)
    drv.init()
    with pytest.raises(drv.LogicError, match="cannot pop"):
        drv.Context.pop()
    with pytest.raises(drv.LogicError, match="no currently active context"):
        drv.mem_alloc(16)
    first, second = (drv.Device(0).retain_primary_context() for _ in range(2))
    assert first is not second and fake.gpu.retains == 2     # one retain per Context object
    left: list = []
    thread = threading.Thread(target=lambda: (second.detach(), left.append(fake.gpu.retains)))
    thread.start()
    thread.join()
    assert left == [2]                  # detached on another thread: pycuda leaks the retain
    with pytest.raises(drv.LogicError, match="invalid context"):
        second.detach()
    fake.gpu.retains -= 1               # (the leak, accounted for)
    first.push()
    first.detach()
    fake.cuda_python.cuCtxPopCurrent()


# --- ctypes through argtypes ------------------------------------------------------------------

def test_libcuda_calls_pass_64_bit_handles_only_through_argtypes(cuda):
    fake = cuda.install(cuda_python=None)
    drv = fake.pycuda_driver
    drv.init()
    primary = drv.Device(0).retain_primary_context()
    primary.push()
    try:
        driver = CtypesDriver(fake.libcuda)
        stream = driver.stream_create(0)
        assert stream > 1 << 32
        driver.stream_synchronize(stream)                      # argtypes set: fine
        bare = fakes_cuda.FakeLibCuda(fake.gpu)                # as CDLL gives it: none set
        assert bare.cuStreamSynchronize(stream) != fakes_cuda.SUCCESS
        wrong = fakes_cuda.FakeLibCuda(fake.gpu)
        wrong.cuStreamSynchronize.argtypes = [ctypes.c_int]    # a pointer declared as int
        assert wrong.cuStreamSynchronize(stream) != fakes_cuda.SUCCESS
        assert sum("not a live stream" in v or "default stream" in v
                   for v in fake.gpu.violations) == 2
        fake.gpu.violations.clear()
        driver.stream_destroy(stream)
    finally:
        drv.Context.pop()
        primary.push()
        primary.detach()
        cuda_streams.CtypesDriver(fake.libcuda).ctx_pop()


@pytest.mark.parametrize("layout, libcuda", [(None, True), ("bindings", False)])
def test_the_device_identity_needs_cuinit_and_no_context(cuda, layout, libcuda):
    fake = cuda.install(cuda_python=layout, libcuda=libcuda, integrated=False)
    status, _ = fake.gpu.cu_device_get("test", 0)
    assert status == fakes_cuda.gpu.NOT_INITIALIZED
    name, capability = cuda_streams.open_driver().device_identity(0)
    assert (name, capability) == ("Fake discrete GPU", (9, 0))
    with pytest.raises(CudaDriverError, match="INVALID_DEVICE"):
        cuda_streams.open_driver().device_identity(1)


# --- TensorRT's per-context rules -------------------------------------------------------------

def _engine_and_stream(fake, major: int):
    drv = fake.pycuda_driver
    drv.init()
    primary = drv.Device(0).retain_primary_context()
    primary.push()
    runtime = fake.tensorrt.Runtime(fake.tensorrt.Logger())
    engine = runtime.deserialize_cuda_engine(fakes_cuda.engine_blob(
        "e", {"a": ("float32", (-1, 2))}, {"b": ("float32", (-1, 2), "a", 1)}, major,
        profiles=[{"a": [[1, 2], [2, 2], [4, 2]]}] * 2))
    streams = [int(fake.cuda_python.cuStreamCreateWithPriority(1, 0)[1]) for _ in range(2)]
    return primary, engine, streams


def _bind(fake, context, batch: int) -> None:
    for name in ("a", "b"):
        alloc = fake.gpu.allocate("device", batch * 2 * 4)
        context.set_tensor_address(name, alloc.device_ptr)


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_the_fake_tensorrt_keeps_the_profile_rules(cuda, version):
    fake = cuda.install(trt_version=version)
    gpu, major = fake.gpu, int(version.split(".")[0])
    primary, engine, (s0, s1) = _engine_and_stream(fake, major)
    first, second = engine.create_execution_context(), engine.create_execution_context()
    assert (first.active_optimization_profile, second.active_optimization_profile) == \
        ((0, -1) if major == 8 else (0, 0))
    if major == 8:
        _bind(fake, second, 2)
        assert second.set_input_shape("a", (2, 2)) is False     # no profile: refused
        assert second.execute_async_v3(s0) is False
    with pytest.raises(RuntimeError, match="set optimization profile"):
        second.set_optimization_profile_async(2, s0)              # only profiles 0 and 1
    assert second.set_optimization_profile_async(1, s1)
    assert first.set_input_shape("a", (8, 2)) is False            # past the max of 4
    assert first.set_input_shape("a", (3, 2)) and second.set_input_shape("a", (3, 2))
    _bind(fake, first, 3)
    _bind(fake, second, 3)
    gpu.hold()
    assert first.execute_async_v3(s0)
    assert second.execute_async_v3(s0)                  # profile switched on s1, not synced
    assert any("before its profile switch" in v for v in gpu.violations)
    gpu.violations.clear()
    second.set_optimization_profile_async(0, s0)
    second.set_input_shape("a", (3, 2))
    fake.cuda_python.cuEventRecord(fake.cuda_python.cuEventCreate(1)[1], s0)
    assert second.execute_async_v3(s0)                  # profile 0, while `first` runs on it
    assert any("run at once on optimization profile 0" in v for v in gpu.violations)
    gpu.violations.clear()
    fake.cuda_python.cuEventRecord(fake.cuda_python.cuEventCreate(1)[1], s0)
    gpu.release()
    runtime = fake.tensorrt.Runtime(fake.tensorrt.Logger())
    runtime.DLA_core = 5                                # beyond the 2 cores: kept at -1
    assert runtime.DLA_core == -1 and runtime.num_DLA_cores == 2
    np.testing.assert_array_equal(gpu.device[first.addresses["b"]].array[:24].view(np.float32),
                                  np.ones(6, np.float32))
    del first, second, engine, runtime      # destroyed before the context goes, as it must
    for alloc in gpu.live_allocations():
        gpu.free(alloc)
    fake.pycuda_driver.Context.pop()
    primary.push()
    primary.detach()
    fake.cuda_python.cuCtxPopCurrent()


def test_an_int64_engine_does_not_deserialize_on_8_6(cuda, tmp_path):
    cuda.install(trt_version="8.6.1")
    backend = cuda.make(streams=1)
    path = fakes_cuda.write_engine(tmp_path / "i.engine", "i", {"x": ("int64", (1, 4))},
                                   {"y": ("int64", (1, 4), "x", 1)}, 8)
    with pytest.raises(Exception, match="cannot deserialize"):
        backend.load(MODEL, path, 1)
