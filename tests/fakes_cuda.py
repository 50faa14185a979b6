"""Fake `tensorrt`, `pycuda.driver` and CUDA driver API (cuda-python, and libcuda.so.1 through
ctypes) on one simulated GPU, for testing the TensorRT backend without a device.

The fakes mirror the real Python APIs the backend uses (names, argument and return
conventions: cuda-python returns (CUresult, *outputs); pycuda's async calls take only pycuda
Stream objects; TensorRT's `deserialize_cuda_engine` returns None on a bad engine). They
RECORD every call in `FakeGpu.calls` (op, thread, args) and CHECK the contract the backend
promises; a broken rule is appended to `FakeGpu.violations`, which tests assert stays empty:
  - every CUDA-calling thread has the device's PRIMARY context pushed (retained, not a new one:
    `Device.make_context`, `pycuda.driver.Stream()` and importing `pycuda.autoinit` are
    violations), and pushes/pops balance;
  - `execute_async_v3` runs on a live, non-blocking, non-default stream, with an address set
    for every I/O tensor of the engine and every dynamic input's shape set; the addresses are
    live allocations big enough for the tensor, device memory on a discrete GPU;
  - an execution context is never used by two launches at once, and every launch is followed
    by an event record on its stream (`check_quiescent`);
  - events are made with BLOCKING_SYNC (synchronize sleeps, no spinning); `cuEventQuery` calls
    are counted so tests can assert no busy polling;
  - async copies go between pinned host memory and device memory on a created stream.
The GPU "runs" work at enqueue time, in stream order: copies move bytes, and a fake engine
computes each output as (its source input + a constant) with numpy on the memory behind the
bound addresses. Completion is separate: an event recorded while `hold()` is in force stays
pending until `release()`, so tests can keep launches "running".
Fake engines are JSON blobs made by `engine_blob`: a blob for another TensorRT major version
does not deserialize (None), like a real engine built by another TensorRT.
"""
from __future__ import annotations

import builtins
import enum
import importlib.abc
import importlib.machinery
import itertools
import json
import sys
import threading
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.backends.tensorrt import cuda_streams

SUCCESS, INVALID_VALUE, INVALID_CONTEXT, INVALID_HANDLE, NOT_READY = 0, 1, 201, 400, 600
ERROR_NAMES = {SUCCESS: "CUDA_SUCCESS", INVALID_VALUE: "CUDA_ERROR_INVALID_VALUE",
               INVALID_CONTEXT: "CUDA_ERROR_INVALID_CONTEXT",
               INVALID_HANDLE: "CUDA_ERROR_INVALID_HANDLE", NOT_READY: "CUDA_ERROR_NOT_READY"}
DEFAULT_STREAMS = (0, 1, 2)           # NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
NON_BLOCKING, BLOCKING_SYNC, DISABLE_TIMING = 0x1, 0x1, 0x2
DEVICEMAP = 0x2
SYNC_TIMEOUT_S = 10.0                 # a fake event that never completes: fail, don't hang


@dataclass
class Call:
    op: str
    thread: str
    args: tuple


@dataclass
class Allocation:
    kind: str                         # "device" | "mapped" (pinned + device-mapped) | "pinned"
    array: np.ndarray                 # the bytes (uint8)
    device_ptr: int                   # 0 for plain pinned host memory
    freed: bool = False

    @property
    def host_ptr(self) -> int:
        return self.array.ctypes.data if self.kind != "device" else 0


@dataclass
class Stream:
    handle: int
    flags: int
    priority: int
    destroyed: bool = False
    unrecorded: list = field(default_factory=list)   # contexts executed since the last record


@dataclass
class Event:
    handle: int
    flags: int
    done: threading.Event = field(default_factory=threading.Event)
    recorded_on: int | None = None
    destroyed: bool = False


class FakeGpu:
    """The simulated device and its driver state, shared by all the fake modules."""

    def __init__(self, integrated: bool = True, priority_range: tuple[int, int] = (0, -5)):
        self.integrated = integrated
        self.least, self.greatest = priority_range
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.fail_execute: Callable[[str, dict], bool] | None = None
        self.retains = 0
        self.primary = None               # the pycuda Context object of the primary context
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.device: dict[int, Allocation] = {}     # device address -> allocation
        self.host: dict[int, Allocation] = {}       # host address -> pinned/mapped allocation
        self.contexts: list = []                    # every execution context created
        self._stacks: dict[int, list] = {}          # thread ident -> context stack
        self._lock = threading.RLock()
        self._hold = False
        self._pending: list[Event] = []
        self._handles = itertools.count(0x7000_0000, 0x100)
        self._addresses = itertools.count(0x7F00_0000_0000, 1 << 24)

    # --- bookkeeping ------------------------------------------------------------------------
    def record(self, op: str, *args) -> None:
        with self._lock:
            self.calls.append(Call(op, threading.current_thread().name, args))

    def violate(self, text: str) -> None:
        with self._lock:
            self.violations.append(f"{text} [thread {threading.current_thread().name}]")

    def named(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]

    def need_context(self, op: str) -> bool:
        stack = self._stacks.get(threading.get_ident(), [])
        if not stack or stack[-1] is not self.primary or self.retains <= 0:
            self.violate(f"{op} without the retained primary context pushed on this thread")
            return False
        return True

    def push(self, ctx) -> None:
        self.record("ctx.push")
        with self._lock:
            self._stacks.setdefault(threading.get_ident(), []).append(ctx)

    def pop(self):
        self.record("ctx.pop")
        with self._lock:
            stack = self._stacks.get(threading.get_ident())
            if not stack:
                raise self.pycuda_error("cuCtxPopCurrent failed: invalid context")
            return stack.pop()

    def unbalanced(self) -> dict[int, int]:
        return {t: len(s) for t, s in self._stacks.items() if s}

    def handle(self) -> int:
        return next(self._handles)

    def hold(self) -> None:
        """Events recorded from now on stay pending until release()."""
        self._hold = True

    def release(self) -> None:
        with self._lock:
            self._hold = False
            pending, self._pending = self._pending, []
        for event in pending:
            event.done.set()

    def live_allocations(self) -> list[Allocation]:
        seen = {id(a): a for a in [*self.device.values(), *self.host.values()]}
        return [a for a in seen.values() if not a.freed]

    def check_quiescent(self) -> None:
        """After a test: every launch was followed by an event record on its stream."""
        for stream in self.streams.values():
            if stream.unrecorded:
                self.violate(f"stream {stream.handle:#x}: a launch with no event recorded after")

    pycuda_error: Callable[[str], Exception] = staticmethod(RuntimeError)   # set by make_pycuda

    # --- memory -----------------------------------------------------------------------------
    def allocate(self, kind: str, nbytes: int) -> Allocation:
        self.need_context(f"allocate {kind}")
        array = np.zeros(max(int(nbytes), 1), np.uint8)
        device_ptr = next(self._addresses) if kind in ("device", "mapped") else 0
        alloc = Allocation(kind, array, device_ptr)
        with self._lock:
            if device_ptr:
                self.device[device_ptr] = alloc
            if kind != "device":
                self.host[alloc.host_ptr] = alloc
        self.record("alloc", kind, nbytes, device_ptr or alloc.host_ptr)
        return alloc

    def free(self, alloc: Allocation) -> None:
        self.need_context(f"free {alloc.kind}")
        if alloc.freed:
            self.violate(f"{alloc.kind} allocation freed twice")
        alloc.freed = True
        self.record("free", alloc.kind, alloc.device_ptr or alloc.host_ptr)

    def device_view(self, ptr: int, nbytes: int, what: str) -> np.ndarray | None:
        alloc = self.device.get(ptr)
        if alloc is None or alloc.freed:
            self.violate(f"{what}: {ptr:#x} is not a live device-visible allocation")
            return None
        if alloc.array.size < nbytes:
            self.violate(f"{what}: {nbytes} bytes do not fit the {alloc.array.size} at {ptr:#x}")
            return None
        if not self.integrated and alloc.kind != "device":
            self.violate(f"{what}: {alloc.kind} host memory used by the kernels of a discrete GPU")
        return alloc.array[:nbytes]

    # --- driver API (what cuda-python and libcuda share); `via` names the binding ----------------
    def _live_stream(self, handle: int, op: str) -> Stream | None:
        if handle in DEFAULT_STREAMS:
            self.violate(f"{op} on the default stream")
            return None
        stream = self.streams.get(handle)
        if stream is None or stream.destroyed:
            self.violate(f"{op} on {handle:#x}, not a live stream")
            return None
        return stream

    def cu_priority_range(self, via: str) -> tuple[int, int, int]:
        self.record("cuCtxGetStreamPriorityRange", via)
        if not self.need_context("cuCtxGetStreamPriorityRange"):
            return INVALID_CONTEXT, 0, 0
        return SUCCESS, self.least, self.greatest

    def cu_stream_create(self, via: str, flags: int, priority: int) -> tuple[int, int]:
        self.record("cuStreamCreateWithPriority", via, int(flags), int(priority))
        if not self.need_context("cuStreamCreateWithPriority"):
            return INVALID_CONTEXT, 0
        clamped = min(max(int(priority), self.greatest), self.least)
        stream = Stream(self.handle(), int(flags), clamped)
        self.streams[stream.handle] = stream
        return SUCCESS, stream.handle

    def cu_stream_destroy(self, via: str, handle: int) -> int:
        self.record("cuStreamDestroy", via, handle)
        self.need_context("cuStreamDestroy")
        stream = self.streams.get(handle)
        if stream is None or stream.destroyed:
            self.violate(f"cuStreamDestroy of {handle:#x}, not a live stream")
            return INVALID_HANDLE
        stream.destroyed = True
        return SUCCESS

    def cu_stream_synchronize(self, via: str, handle: int) -> int:
        self.record("cuStreamSynchronize", via, handle)
        self.need_context("cuStreamSynchronize")
        return SUCCESS if self._live_stream(handle, "cuStreamSynchronize") else INVALID_HANDLE

    def cu_event_create(self, via: str, flags: int) -> tuple[int, int]:
        self.record("cuEventCreate", via, int(flags))
        if not self.need_context("cuEventCreate"):
            return INVALID_CONTEXT, 0
        if not int(flags) & BLOCKING_SYNC:
            self.violate("an event without BLOCKING_SYNC: synchronize would spin a CPU core")
        event = Event(self.handle(), int(flags))
        self.events[event.handle] = event
        return SUCCESS, event.handle

    def cu_event_record(self, via: str, handle: int, stream_handle: int) -> int:
        self.record("cuEventRecord", via, handle, stream_handle)
        self.need_context("cuEventRecord")
        event, stream = self.events.get(handle), self._live_stream(stream_handle, "cuEventRecord")
        if event is None or event.destroyed or stream is None:
            return INVALID_HANDLE
        event.done = threading.Event()          # a re-record starts a new completion
        event.recorded_on = stream_handle
        for context in stream.unrecorded:
            context.busy = event.done
        stream.unrecorded.clear()
        with self._lock:
            if self._hold:
                self._pending.append(event)
            else:
                event.done.set()
        return SUCCESS

    def cu_event_synchronize(self, via: str, handle: int) -> int:
        self.record("cuEventSynchronize", via, handle)
        self.need_context("cuEventSynchronize")
        event = self.events.get(handle)
        if event is None or event.destroyed:
            self.violate(f"cuEventSynchronize of {handle:#x}, not a live event")
            return INVALID_HANDLE
        if event.recorded_on is not None and not event.done.wait(SYNC_TIMEOUT_S):
            self.violate("cuEventSynchronize: the event never completed (held?)")
            return INVALID_HANDLE
        return SUCCESS

    def cu_event_query(self, via: str, handle: int) -> int:
        self.record("cuEventQuery", via, handle)
        event = self.events.get(handle)
        return SUCCESS if event is None or event.done.is_set() else NOT_READY

    def cu_event_destroy(self, via: str, handle: int) -> int:
        self.record("cuEventDestroy", via, handle)
        self.need_context("cuEventDestroy")
        event = self.events.get(handle)
        if event is None or event.destroyed:
            self.violate(f"cuEventDestroy of {handle:#x}, not a live event")
            return INVALID_HANDLE
        event.destroyed = True
        return SUCCESS

    def cu_memcpy(self, via: str, direction: str, dst: int, src: int, nbytes: int,
                  stream_handle: int) -> int:
        op = f"cuMemcpy{direction}Async"
        self.record(op, via, dst, src, int(nbytes), stream_handle)
        self.need_context(op)
        if self._live_stream(stream_handle, op) is None:
            return INVALID_HANDLE
        host_ptr, dev_ptr = (src, dst) if direction == "HtoD" else (dst, src)
        host = self.host.get(host_ptr)
        if host is None or host.freed:
            self.violate(f"{op}: {host_ptr:#x} is not live pinned host memory (pageable memory "
                         "makes the copy synchronous)")
            return INVALID_VALUE
        device = self.device_view(dev_ptr, int(nbytes), op)
        if device is None or host.array.size < nbytes:
            return INVALID_VALUE
        if direction == "HtoD":
            device[:] = host.array[:nbytes]
        else:
            host.array[:nbytes] = device
        return SUCCESS


# --- pycuda --------------------------------------------------------------------------------------

class _AutoinitGuard(importlib.abc.MetaPathFinder):
    """Importing pycuda.autoinit is a violation (it creates a second, non-primary context)."""

    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "pycuda.autoinit":
            self.gpu.violate("import pycuda.autoinit: it makes a new context, not the primary")
            raise ImportError("pycuda.autoinit is blocked by tests/fakes_cuda.py")
        return None


def make_pycuda(gpu: FakeGpu) -> tuple[types.ModuleType, types.ModuleType]:
    package = types.ModuleType("pycuda")
    package.__path__ = []
    package.__spec__ = importlib.machinery.ModuleSpec("pycuda", None, is_package=True)
    drv = types.ModuleType("pycuda.driver")
    drv.__spec__ = importlib.machinery.ModuleSpec("pycuda.driver", None)
    package.driver = drv

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class MemoryError(Error, builtins.MemoryError):   # noqa: A001 - pycuda's own name
        pass

    gpu.pycuda_error = LogicError

    class device_attribute(enum.IntEnum):
        MULTIPROCESSOR_COUNT = 16
        INTEGRATED = 18
        CAN_MAP_HOST_MEMORY = 19

    class event_flags(enum.IntEnum):
        DEFAULT = 0
        BLOCKING_SYNC = 1
        DISABLE_TIMING = 2

    class host_alloc_flags:
        PORTABLE, DEVICEMAP, WRITECOMBINED = 1, DEVICEMAP, 4

    def init(flags: int = 0) -> None:
        gpu.record("cuInit", flags)

    def get_driver_version() -> int:
        return 12020                       # CUDA 12.2 (JetPack 6), encoded as the driver does

    class Context:
        def __init__(self, primary: bool):
            self.primary = primary

        def push(self) -> None:
            gpu.push(self)

        @staticmethod
        def pop() -> None:
            gpu.pop()

        def detach(self) -> None:
            gpu.record("ctx.detach", self.primary)
            if self.primary:
                gpu.retains -= 1

        @staticmethod
        def get_current():
            stack = gpu._stacks.get(threading.get_ident())
            return stack[-1] if stack else None

    class Device:
        def __init__(self, ordinal: int):
            if ordinal != 0:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake Orin (integrated)" if gpu.integrated else "Fake discrete GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 7) if gpu.integrated else (9, 0)

        def get_attribute(self, attr) -> int:
            if not isinstance(attr, device_attribute):
                raise TypeError("get_attribute takes a pycuda.driver.device_attribute")
            return {device_attribute.INTEGRATED: int(gpu.integrated),
                    device_attribute.CAN_MAP_HOST_MEMORY: 1,
                    device_attribute.MULTIPROCESSOR_COUNT: 8}[attr]

        def retain_primary_context(self) -> Context:
            gpu.record("retain_primary_context")
            if gpu.primary is None:
                gpu.primary = Context(primary=True)
            gpu.retains += 1
            return gpu.primary

        def make_context(self, flags: int = 0) -> Context:
            gpu.violate("Device.make_context: a new context, not the primary one")
            return Context(primary=False)

    class Stream:
        """pycuda's Stream: no priority argument, so using it is a violation here."""

        def __init__(self, flags: int = 0):
            gpu.violate("pycuda.driver.Stream(): it cannot take a priority")
            self.handle = gpu.handle()

    def _pycuda_stream(stream, op: str) -> None:
        if stream is None:
            gpu.violate(f"{op} on the default stream")
        elif not isinstance(stream, Stream):   # Boost.Python ArgumentError is a TypeError
            raise TypeError(f"{op}: stream must be a pycuda.driver.Stream, not "
                            f"{type(stream).__name__}")

    class Event:
        def __init__(self, flags: int = 0):
            gpu.record("pycuda.Event", int(flags))

        def record(self, stream=None):
            _pycuda_stream(stream, "Event.record")
            return self

        def synchronize(self):
            return self

        def query(self) -> bool:
            gpu.record("pycuda.Event.query")
            return True

    class HostAllocation:
        """pagelocked_empty's array.base: numpy sees the bytes through __array_interface__."""

        def __init__(self, alloc: Allocation, shape: tuple, dtype: np.dtype):
            self._alloc = alloc
            self.__array_interface__ = {"data": (alloc.host_ptr, False), "shape": shape,
                                        "typestr": dtype.str, "version": 3}

        def get_device_pointer(self) -> int:
            gpu.need_context("cuMemHostGetDevicePointer")
            if self._alloc.kind != "mapped":
                raise LogicError("cuMemHostGetDevicePointer failed: invalid value (not "
                                 "allocated with host_alloc_flags.DEVICEMAP)")
            return self._alloc.device_ptr

        def free(self) -> None:
            gpu.free(self._alloc)

    def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        alloc = gpu.allocate("mapped" if mem_flags & DEVICEMAP else "pinned", nbytes)
        return np.asarray(HostAllocation(alloc, shape, dtype))

    class DeviceAllocation:
        def __init__(self, alloc: Allocation):
            self._alloc = alloc

        def __int__(self) -> int:
            return self._alloc.device_ptr

        def free(self) -> None:
            gpu.free(self._alloc)

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        return DeviceAllocation(gpu.allocate("device", nbytes))

    def memcpy_htod_async(dest, src, stream=None) -> None:
        _pycuda_stream(stream, "memcpy_htod_async")

    def memcpy_dtoh_async(dest, src, stream=None) -> None:
        _pycuda_stream(stream, "memcpy_dtoh_async")

    for name, value in list(locals().items()):
        if name not in ("gpu", "package", "drv", "name", "value") and not name.startswith("_"):
            setattr(drv, name, value)
    return package, drv


# --- cuda-python ---------------------------------------------------------------------------------

def make_cuda_python(gpu: FakeGpu, module_name: str) -> types.ModuleType:
    """`cuda.bindings.driver` (or the older `cuda.cuda`): (CUresult, *outputs) tuples."""
    via = "cuda-python"
    drv = types.ModuleType(module_name)
    drv.__spec__ = importlib.machinery.ModuleSpec(module_name, None)

    CUresult = enum.IntEnum("CUresult", {v: k for k, v in ERROR_NAMES.items()})

    class CUstream_flags(enum.IntEnum):
        CU_STREAM_DEFAULT = 0
        CU_STREAM_NON_BLOCKING = 1

    class CUevent_flags(enum.IntEnum):
        CU_EVENT_DEFAULT = 0
        CU_EVENT_BLOCKING_SYNC = 1
        CU_EVENT_DISABLE_TIMING = 2

    class _Handle:
        def __init__(self, init_value=0):
            self._value = int(init_value or 0)

        def __int__(self) -> int:
            return self._value

        def __repr__(self) -> str:
            return f"<{type(self).__name__} {self._value:#x}>"

    class CUstream(_Handle):
        pass

    class CUevent(_Handle):
        pass

    class CUdeviceptr(_Handle):
        pass

    def _int(handle) -> int:
        return 0 if handle is None else int(handle)

    def cuCtxGetStreamPriorityRange():
        status, least, greatest = gpu.cu_priority_range(via)
        return CUresult(status), least, greatest

    def cuStreamCreateWithPriority(flags, priority):
        status, handle = gpu.cu_stream_create(via, int(flags), int(priority))
        return CUresult(status), CUstream(handle)

    def cuStreamCreate(flags):
        gpu.violate("cuStreamCreate: a stream without a priority")
        return cuStreamCreateWithPriority(flags, 0)

    def cuStreamDestroy(stream):
        return (CUresult(gpu.cu_stream_destroy(via, _int(stream))),)

    def cuStreamSynchronize(stream):
        return (CUresult(gpu.cu_stream_synchronize(via, _int(stream))),)

    def cuEventCreate(flags):
        status, handle = gpu.cu_event_create(via, int(flags))
        return CUresult(status), CUevent(handle)

    def cuEventRecord(event, stream):
        return (CUresult(gpu.cu_event_record(via, _int(event), _int(stream))),)

    def cuEventSynchronize(event):
        return (CUresult(gpu.cu_event_synchronize(via, _int(event))),)

    def cuEventQuery(event):
        return (CUresult(gpu.cu_event_query(via, _int(event))),)

    def cuEventDestroy(event):
        return (CUresult(gpu.cu_event_destroy(via, _int(event))),)

    def cuMemcpyHtoDAsync(dstDevice, srcHost, ByteCount, hStream):
        return (CUresult(gpu.cu_memcpy(via, "HtoD", _int(dstDevice), int(srcHost), ByteCount,
                                       _int(hStream))),)

    def cuMemcpyDtoHAsync(dstHost, srcDevice, ByteCount, hStream):
        return (CUresult(gpu.cu_memcpy(via, "DtoH", int(dstHost), _int(srcDevice), ByteCount,
                                       _int(hStream))),)

    for name, value in list(locals().items()):
        if name not in ("gpu", "drv", "via", "module_name") and not name.startswith("_"):
            setattr(drv, name, value)
    return drv


# --- libcuda.so.1 through ctypes -----------------------------------------------------------------

class FakeLibCuda:
    """What ctypes.CDLL("libcuda.so.1") gives: plain functions (so argtypes can be set) taking
    ints and ctypes.byref(...) out-parameters, returning CUresult ints."""

    def __init__(self, gpu: FakeGpu):
        via = "libcuda"

        def out(ref, value) -> None:
            ref._obj.value = value

        def cuCtxGetStreamPriorityRange(least, greatest):
            status, lo, hi = gpu.cu_priority_range(via)
            out(least, lo)
            out(greatest, hi)
            return status

        def cuStreamCreateWithPriority(stream, flags, priority):
            status, handle = gpu.cu_stream_create(via, flags, priority)
            out(stream, handle)
            return status

        def cuStreamSynchronize(stream):
            return gpu.cu_stream_synchronize(via, stream or 0)

        def cuStreamDestroy_v2(stream):
            return gpu.cu_stream_destroy(via, stream or 0)

        def cuEventCreate(event, flags):
            status, handle = gpu.cu_event_create(via, flags)
            out(event, handle)
            return status

        def cuEventRecord(event, stream):
            return gpu.cu_event_record(via, event or 0, stream or 0)

        def cuEventSynchronize(event):
            return gpu.cu_event_synchronize(via, event or 0)

        def cuEventQuery(event):
            return gpu.cu_event_query(via, event or 0)

        def cuEventDestroy_v2(event):
            return gpu.cu_event_destroy(via, event or 0)

        def cuMemcpyHtoDAsync_v2(dst, src, nbytes, stream):
            return gpu.cu_memcpy(via, "HtoD", dst, src, nbytes, stream or 0)

        def cuMemcpyDtoHAsync_v2(dst, src, nbytes, stream):
            return gpu.cu_memcpy(via, "DtoH", dst, src, nbytes, stream or 0)

        def cuGetErrorName(status, text):
            out(text, ERROR_NAMES.get(status, "CUDA_ERROR_UNKNOWN").encode())
            return SUCCESS

        for name, value in list(locals().items()):
            if name.startswith("cu"):
                setattr(self, name, value)


# --- tensorrt ------------------------------------------------------------------------------------

def engine_blob(name: str, inputs: dict, outputs: dict, trt_major: int = 10) -> bytes:
    """A fake serialized engine. inputs: {name: (dtype, shape)}; outputs: {name: (dtype, shape,
    source input, addend)}: output = source + addend. -1 dims are dynamic; an output's -1
    dims take its source's dims."""
    return json.dumps({"fake_trt_engine": name, "trt_major": trt_major,
                       "inputs": {k: [v[0], list(v[1])] for k, v in inputs.items()},
                       "outputs": {k: [v[0], list(v[1]), v[2], v[3]]
                                   for k, v in outputs.items()}}).encode()


def write_engine(path: Path, name: str, inputs: dict, outputs: dict, trt_major: int = 10) -> Path:
    path.write_bytes(engine_blob(name, inputs, outputs, trt_major))
    return path


def make_tensorrt(gpu: FakeGpu, version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    major = int(version.split(".")[0])
    context_ids = itertools.count()

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64 = range(9)

    numpy_types = {DataType.FLOAT: np.float32, DataType.HALF: np.float16,
                   DataType.INT8: np.int8, DataType.INT32: np.int32, DataType.BOOL: np.bool_,
                   DataType.UINT8: np.uint8, DataType.INT64: np.int64}
    by_name = {np.dtype(t).name: d for d, t in numpy_types.items()} | {"bfloat16": DataType.BF16}

    def nptype(trt_type):
        if trt_type not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return numpy_types[trt_type]

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 2):
            self.min_severity = min_severity

    class ICudaEngine:
        def __init__(self, spec: dict):
            self.name = spec["fake_trt_engine"]
            self._io = {n: (TensorIOMode.INPUT, by_name[d], tuple(s), None)
                        for n, (d, s) in spec["inputs"].items()}
            self._io |= {n: (TensorIOMode.OUTPUT, by_name[d], tuple(s), (src, add))
                         for n, (d, s, src, add) in spec["outputs"].items()}
            self._names = list(self._io)

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return self._io[name][0] if name in self._io else TensorIOMode.NONE

        def get_tensor_dtype(self, name: str):
            return self._io[name][1]

        def get_tensor_shape(self, name: str) -> tuple:
            return self._io[name][2]

        def create_execution_context(self):
            gpu.need_context("create_execution_context")
            context = IExecutionContext(self, next(context_ids))
            gpu.contexts.append(context)
            gpu.record("create_execution_context", self.name, context.id)
            return context

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine, context_id: int):
            self.engine, self.id = engine, context_id
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.busy: threading.Event | None = None   # completion of its last launch

        def set_input_shape(self, name: str, shape) -> bool:
            gpu.record("set_input_shape", self.id, name, tuple(shape))
            mode, _, dims, _ = self.engine._io.get(name, (None, None, (), None))
            shape = tuple(int(d) for d in shape)
            if mode is not TensorIOMode.INPUT or len(shape) != len(dims) or any(
                    d != s and d >= 0 for d, s in zip(dims, shape)) or min(shape) < 1:
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            mode, _, dims, source = self.engine._io[name]
            if mode is TensorIOMode.INPUT:
                return self.shapes.get(name, dims)
            src = self.get_tensor_shape(source[0])
            return tuple(s if d < 0 else d for d, s in zip(dims, src))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if not isinstance(ptr, int):
                raise TypeError("set_tensor_address(): incompatible function arguments")
            gpu.record("set_tensor_address", self.id, name, ptr)
            if name not in self.engine._io:
                return False
            self.addresses[name] = ptr
            return True

        def _view(self, name: str) -> np.ndarray | None:
            _, dtype, _, _ = self.engine._io[name]
            shape = self.get_tensor_shape(name)
            np_dtype = np.dtype(nptype(dtype))
            nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            raw = gpu.device_view(self.addresses[name], nbytes, f"{self.engine.name}/{name}")
            return None if raw is None else raw.view(np_dtype).reshape(shape)

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(): incompatible function arguments")
            gpu.record("execute_async_v3", self.engine.name, self.id, stream_handle,
                       dict(self.addresses))
            gpu.need_context("execute_async_v3")
            stream = gpu._live_stream(stream_handle, "execute_async_v3")
            if stream is None:
                return False
            if not stream.flags & NON_BLOCKING:
                gpu.violate("execute_async_v3 on a blocking stream (syncs with the default one)")
            if self.busy is not None and not self.busy.is_set() or any(
                    self in s.unrecorded for s in gpu.streams.values()):
                gpu.violate(f"execution context {self.id} launched while its last launch runs")
            unset = [n for n in self.engine._names if n not in self.addresses]
            dynamic = [n for n, (m, _, d, _) in self.engine._io.items()
                       if m is TensorIOMode.INPUT and -1 in d and n not in self.shapes]
            if unset or dynamic:
                gpu.violate(f"{self.engine.name}: execute_async_v3 with no address for "
                            f"{unset} / no shape for dynamic inputs {dynamic}")
                return False
            views = {n: self._view(n) for n in self.engine._names}
            if any(v is None for v in views.values()):
                return False
            inputs = {n: views[n].copy() for n, (m, *_) in self.engine._io.items()
                      if m is TensorIOMode.INPUT}
            if gpu.fail_execute is not None and gpu.fail_execute(self.engine.name, inputs):
                return False
            for n, (mode, _, _, source) in self.engine._io.items():
                if mode is TensorIOMode.OUTPUT:
                    out = views[n]
                    out[...] = (inputs[source[0]] + source[1]).astype(out.dtype)
            stream.unrecorded.append(self)
            return True

    class Runtime:
        def __init__(self, logger: Logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(): incompatible function arguments")
            gpu.need_context("Runtime()")
            self.logger = logger

        def deserialize_cuda_engine(self, blob) -> ICudaEngine | None:
            gpu.record("deserialize_cuda_engine")
            gpu.need_context("deserialize_cuda_engine")
            try:
                spec = json.loads(bytes(blob))
            except (ValueError, UnicodeDecodeError):
                return None                 # the real runtime logs an error and returns None
            if not isinstance(spec, dict) or spec.get("trt_major") != major:
                return None
            return ICudaEngine(spec)

    for name, value in list(locals().items()):
        if isinstance(value, type) or name == "nptype":
            setattr(trt, name, value)
    return trt


# --- installing them -----------------------------------------------------------------------------

@dataclass
class FakeCuda:
    gpu: FakeGpu
    tensorrt: types.ModuleType
    pycuda_driver: types.ModuleType
    cuda_python: types.ModuleType | None
    libcuda: FakeLibCuda | None

    def vias(self, op: str) -> Counter:
        """Which binding carried each call of a driver-API `op`."""
        return Counter(c.args[0] for c in self.gpu.named(op))


def install(monkeypatch, *, integrated: bool = True, cuda_python: str | None = "bindings",
            libcuda: bool = True, trt_version: str = "10.3.0") -> FakeCuda:
    """Put the fakes where the backend imports them from. cuda_python: "bindings" (the
    `cuda.bindings.driver` layout), "legacy" (`cuda.cuda`) or None (not installed);
    libcuda: whether ctypes finds libcuda.so.1."""
    gpu = FakeGpu(integrated)
    trt = make_tensorrt(gpu, trt_version)
    pycuda, pycuda_driver = make_pycuda(gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda_driver)
    monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_AutoinitGuard(gpu), *sys.meta_path])
    driver = None
    if cuda_python is None:
        monkeypatch.setitem(sys.modules, "cuda", None)          # import cuda -> ImportError
    else:
        package = types.ModuleType("cuda")
        package.__path__ = []
        package.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
        monkeypatch.setitem(sys.modules, "cuda", package)
        if cuda_python == "bindings":
            bindings = types.ModuleType("cuda.bindings")
            bindings.__path__ = []
            driver = make_cuda_python(gpu, "cuda.bindings.driver")
            bindings.driver = driver
            package.bindings = bindings
            monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
            monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
        else:
            driver = make_cuda_python(gpu, "cuda.cuda")
            package.cuda = driver
            monkeypatch.setitem(sys.modules, "cuda.bindings", None)
            monkeypatch.setitem(sys.modules, "cuda.cuda", driver)
    lib = FakeLibCuda(gpu) if libcuda else None
    monkeypatch.setattr(cuda_streams, "_load_libcuda", lambda: lib)
    return FakeCuda(gpu, trt, pycuda_driver, driver, lib)
