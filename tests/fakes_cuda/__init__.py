"""Fake `tensorrt`, `pycuda.driver` and CUDA driver API (cuda-python, and libcuda.so.1 through
ctypes) on one simulated GPU, for testing the TensorRT backend without a device.

The fakes mirror the real Python APIs the backend uses (names, argument and return
conventions: cuda-python returns (CUresult, *outputs); pycuda's async calls take only pycuda
Stream objects; TensorRT's `deserialize_cuda_engine` returns None on a bad engine). They
RECORD every call in `FakeGpu.calls` (op, thread, args) and CHECK the contract the backend
promises; a broken rule is appended to `FakeGpu.violations`, which tests assert stays empty:
  - every CUDA-calling thread has the device's PRIMARY context pushed (retained, not a new one:
    `Device.make_context`, `pycuda.driver.Stream()` and importing `pycuda.autoinit` are
    violations); `check_balanced`: every retain released, nothing left pushed on any thread.
    pycuda is modelled with its own per-thread stack beside the driver's, and its
    `Context.detach` of a primary context releases without popping (pushing it first when it
    is not current), as src/cpp/cuda.hpp does;
  - `execute_async_v3` runs on a live, non-blocking, non-default stream, with an address set
    for every I/O tensor of the engine and every dynamic input's shape set; the addresses are
    live allocations big enough for the tensor, device memory on a discrete GPU;
  - optimization profiles as TensorRT has them (tensorrt_context.py): one per context in use
    at once, selected before use on 8.6, shapes within the selected profile's min/max, a
    profile switch synchronized before another stream uses it, scratch memory per context;
    the runtime's DLA_core chooses a DLA engine's core;
  - an execution context is never used by two launches at once, and every launch is followed
    by an event record on its stream (`check_quiescent`);
  - lifetimes: TensorRT objects die when their last Python reference goes (a context keeps its
    engine alive, an engine its runtime, as the bindings' keep_alive has it); each destructor
    must run with the primary context current and retained, a context never while its launch
    runs, memory is never freed while a running context reads it, the streams and events
    TensorRT used go after every TensorRT object, and the primary context's last release
    after every allocation (`trt_live`, `trt_freed`, `trt_device_bytes`: weights + scratch);
  - events are made with BLOCKING_SYNC (synchronize sleeps, no spinning); `cuEventQuery` calls
    are counted so tests can assert no busy polling;
  - async copies go between pinned host memory and device memory on a created stream;
  - libcuda.so.1 is a set of real C function pointers with cuda.h's signatures: arguments
    reach the fake converted by the argtypes the caller set, and handles are 64-bit, so a
    missing or wrong argtype truncates them into unknown handles.
The GPU "runs" work at enqueue time, in stream order: copies move bytes, and a fake engine
computes each output as (its source input + a constant) with numpy on the memory behind the
bound addresses. Completion is separate: an event recorded while `hold()` is in force stays
pending until `release()`, so tests can keep launches "running".
Fake engines are JSON blobs made by `engine_blob`: a blob for another TensorRT major version
(or another compute capability, when it names one) does not deserialize (None), like a real
engine built by another TensorRT or for another GPU.

Layout (everything is re-exported here, so `from tests.fakes_cuda import X` works for all):
  gpu.py               FakeGpu (the device, driver state, contract checks), Call, Allocation,
                       Stream, Event and the CUresult / flag constants
  lifetimes.py         FakeGpu's account of TensorRT objects' lifetimes (trt_live, trt_freed)
  pycuda_driver.py     make_pycuda: `pycuda` and `pycuda.driver`; the pycuda.autoinit guard
  driver_api.py        make_cuda_python (`cuda.bindings.driver` / `cuda.cuda`), FakeLibCuda
  tensorrt_runtime.py  make_tensorrt, engine_blob, write_engine (engines, runtime)
  tensorrt_context.py  the execution context and its profile rules
  tensorrt_builder.py  make_builder: the builder side of `tensorrt` (`edgesched build`)
  installer.py         install / install_cuda (put the fakes in sys.modules), check_balanced
The fakes read their constants from gpu.py: monkeypatch `tests.fakes_cuda.gpu.SYNC_TIMEOUT_S`,
not the re-exported name here.
"""
from tests.fakes_cuda.driver_api import FakeLibCuda, make_cuda_python
from tests.fakes_cuda.gpu import (
    BLOCKING_SYNC,
    DEFAULT_STREAMS,
    DEVICEMAP,
    DISABLE_TIMING,
    ERROR_NAMES,
    INVALID_CONTEXT,
    INVALID_HANDLE,
    INVALID_VALUE,
    NON_BLOCKING,
    NOT_READY,
    PRIMARY_HANDLE,
    SUCCESS,
    SYNC_TIMEOUT_S,
    Allocation,
    Call,
    Event,
    FakeGpu,
    Stream,
)
from tests.fakes_cuda.installer import FakeCuda, check_balanced, install, install_cuda
from tests.fakes_cuda.pycuda_driver import _AutoinitGuard, make_pycuda  # noqa: F401
from tests.fakes_cuda.tensorrt_runtime import engine_blob, make_tensorrt, write_engine

__all__ = [
    "SUCCESS", "INVALID_VALUE", "INVALID_CONTEXT", "INVALID_HANDLE", "NOT_READY", "ERROR_NAMES",
    "DEFAULT_STREAMS", "NON_BLOCKING", "BLOCKING_SYNC", "DISABLE_TIMING", "DEVICEMAP",
    "SYNC_TIMEOUT_S", "PRIMARY_HANDLE",
    "Call", "Allocation", "Stream", "Event", "FakeGpu",                      # gpu.py
    "make_pycuda",                                                           # pycuda_driver.py
    "make_cuda_python", "FakeLibCuda",                                       # driver_api.py
    "engine_blob", "write_engine", "make_tensorrt",                          # tensorrt_runtime.py
    "FakeCuda", "install", "install_cuda", "check_balanced",                 # installer.py
]
