"""The TensorRT backend against fake tensorrt / pycuda / CUDA driver modules (tests/fakes_cuda/).

The fakes record every call and check the CUDA contract (primary context pushed on every CUDA
thread, priority non-blocking streams, every tensor bound before a launch, events after each
launch waited with a blocking synchronize, the right kind of memory); each test ends by
asserting the fake saw no violation. Fake engines compute `output = input + constant`, so a
two-slice model (slice 0 adds 1, slice 1 adds 10) returns x + 11 through the real Engine.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from edgesched.backends.base import Doorbell
from edgesched.errors import ServerError
from edgesched.types import Launch
from tests import fakes_cuda
from tests.unit.tensorrt_helpers import (  # noqa: F401
    MODEL,
    WAITER,
    inputs,
    one_line,
    run_engine,
    stream_of,
    two_slice_model,
)

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
    assert fakes_cuda.check_balanced(gpu) == []          # released, and nothing left pushed
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


# --- the fakes bite -----------------------------------------------------------------------------

def test_the_fakes_catch_contract_breaks(cuda, tmp_path):
    fake = cuda.install()
    gpu, drv = fake.gpu, fake.pycuda_driver
    with pytest.raises(ImportError):
        import pycuda.autoinit  # noqa: F401
    drv.init()
    drv.Device(0).make_context().detach()                          # pushed, then popped
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
    ctx.push()                                     # the balanced release (context.py)
    ctx.detach()
    fake.cuda_python.cuCtxPopCurrent()
    del context, engine              # destructors after the release: no context to free in
    found = "\n".join(gpu.violations)
    for text in ("pycuda.autoinit", "make_context", "Runtime() without", "default stream",
                 "no address", "BLOCKING_SYNC",
                 "the primary context released while TensorRT objects still live",
                 "destroying a TensorRT execution context (e#", "destroying a TensorRT engine",
                 "destroying a TensorRT runtime"):
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
