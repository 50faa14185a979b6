"""Priority streams, completion events and stream-ordered copies through the CUDA driver API.

Only the tensorrt package (runtime.py) uses this module; it is the one other place that may
import cuda-python or load libcuda, and it does so lazily (`open_driver`). Why not pycuda for
these: pycuda's `Stream()` takes no priority, and its `Event.record` / `memcpy_*_async` accept
only pycuda Stream objects, so they cannot run on a stream made here. Memory and the primary
context stay with pycuda; everything ordered on our streams goes through one `Driver`:
  - cuda-python (`cuda.bindings.driver`, or the older `cuda.cuda`) when importable,
  - else the same functions from `libcuda.so.1` through ctypes.
The one call that blocks, `event_synchronize`, always goes through ctypes when libcuda loads:
ctypes releases the GIL around foreign calls, while cuda-python does only in newer releases
(its 12.8-generated sources call the driver with the GIL held; the 13.0 ones wrap every call in
`with nogil`), and a waiter holding the GIL would stall the engine thread for a whole slice.

Every stream, event and copy call acts on the calling thread's current context: callers push
the primary context first. `ctx_pop` pops whatever is current (pycuda's `Context.detach` of a
retained primary context pushes it and never pops: see context.py). `device_identity` needs no
context. Handles are plain ints (what TensorRT's `execute_async_v3` takes); 0 never appears.
"""
from __future__ import annotations

import ctypes
from typing import Protocol

from edgesched.errors import BackendUnavailable

CU_STREAM_NON_BLOCKING = 0x1       # no implicit sync with the legacy default stream
CU_EVENT_BLOCKING_SYNC = 0x1       # synchronize() sleeps in the driver instead of spinning
CU_EVENT_DISABLE_TIMING = 0x2      # cheaper record; we time completions on the host clock
EVENT_FLAGS = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING
TIMING_EVENT_FLAGS = CU_EVENT_BLOCKING_SYNC   # calibration: timed on the device, waits sleep
CC_MAJOR, CC_MINOR = 75, 76        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
HOST_REGISTER, READ_ONLY_REGISTER = 99, 113   # ..._HOST_REGISTER_SUPPORTED, ..._READ_ONLY_...
CU_MEMHOSTREGISTER_DEVICEMAP = 0x2
NAME_BYTES = 256                   # cuDeviceGetName buffer (names are far shorter)
LIBCUDA = "libcuda.so.1"


class CudaDriverError(RuntimeError):
    """A driver call failed; str() names the call and the CUresult."""


class Driver(Protocol):
    name: str

    def priority_range(self) -> tuple[int, int]:
        """(least, greatest) stream priority of the current context; greatest is numerically
        lowest (e.g. (0, -5)): lower number = higher priority."""

    def stream_create(self, priority: int) -> int:
        """A CU_STREAM_NON_BLOCKING stream at `priority`."""

    def stream_synchronize(self, stream: int) -> None: ...

    def stream_destroy(self, stream: int) -> None: ...

    def event_create(self, timing: bool = False) -> int:
        """An event with BLOCKING_SYNC | DISABLE_TIMING (timing: BLOCKING_SYNC only)."""

    def event_elapsed_ms(self, start: int, end: int) -> float:
        """Device milliseconds between two completed timing events (cuEventElapsedTime)."""

    def host_register(self, host: int, nbytes: int, flags: int) -> int:
        """cuMemHostRegister; the range's device address with DEVICEMAP in flags, else 0."""

    def host_unregister(self, host: int) -> None: ...

    def host_register_support(self, ordinal: int) -> tuple[bool, bool]:
        """(HOST_REGISTER_SUPPORTED, READ_ONLY_HOST_REGISTER_SUPPORTED) of device `ordinal`."""

    def event_record(self, event: int, stream: int) -> None: ...

    def event_synchronize(self, event: int) -> None:
        """Block (sleeping, GIL released) until the work before the record is done."""

    def event_destroy(self, event: int) -> None: ...

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Device pointer <- pinned host address, ordered on `stream`."""

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Pinned host address <- device pointer, ordered on `stream`."""

    def ctx_pop(self) -> None:
        """cuCtxPopCurrent: pop this thread's current context."""

    def device_identity(self, ordinal: int) -> tuple[str, tuple[int, int]]:
        """(name, (major, minor) compute capability) of device `ordinal` (cuInit first)."""


# --- ctypes on libcuda.so.1 -------------------------------------------------------------------

def _load_libcuda():
    """The driver library, or None where there is none (tests replace this function)."""
    try:
        return ctypes.CDLL(LIBCUDA)
    except OSError:
        return None


_P = ctypes.c_void_p
# name -> argtypes; every function returns CUresult (int). The _v2 names are the ABI that
# cuda.h's macros select (64-bit CUdeviceptr, current stream/event destroy semantics).
_SIGNATURES = {
    "cuCtxGetStreamPriorityRange": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
    "cuStreamCreateWithPriority": [ctypes.POINTER(_P), ctypes.c_uint, ctypes.c_int],
    "cuStreamSynchronize": [_P],
    "cuStreamDestroy_v2": [_P],
    "cuEventCreate": [ctypes.POINTER(_P), ctypes.c_uint],
    "cuEventRecord": [_P, _P],
    "cuEventSynchronize": [_P],
    "cuEventDestroy_v2": [_P],
    "cuEventElapsedTime": [ctypes.POINTER(ctypes.c_float), _P, _P],
    "cuMemcpyHtoDAsync_v2": [ctypes.c_uint64, _P, ctypes.c_size_t, _P],
    "cuMemcpyDtoHAsync_v2": [_P, ctypes.c_uint64, ctypes.c_size_t, _P],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuCtxPopCurrent_v2": [ctypes.POINTER(_P)],
    "cuInit": [ctypes.c_uint],
    "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
    "cuDeviceGetAttribute": [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int],
    "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
    "cuMemHostRegister_v2": [_P, ctypes.c_size_t, ctypes.c_uint],
    "cuMemHostGetDevicePointer_v2": [ctypes.POINTER(ctypes.c_uint64), _P, ctypes.c_uint],
    "cuMemHostUnregister": [_P],
}


class CtypesDriver:
    name = "ctypes:" + LIBCUDA

    def __init__(self, lib):
        self._lib = lib
        for fn, argtypes in _SIGNATURES.items():
            f = getattr(lib, fn)
            f.argtypes, f.restype = argtypes, ctypes.c_int

    def _call(self, fn: str, *args) -> None:
        status = getattr(self._lib, fn)(*args)
        if status != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorName(status, ctypes.byref(text))
            name = text.value.decode() if text.value else f"CUresult {status}"
            raise CudaDriverError(f"{fn} failed: {name}")

    def priority_range(self) -> tuple[int, int]:
        least, greatest = ctypes.c_int(), ctypes.c_int()
        self._call("cuCtxGetStreamPriorityRange", ctypes.byref(least), ctypes.byref(greatest))
        return least.value, greatest.value

    def stream_create(self, priority: int) -> int:
        handle = _P()
        self._call("cuStreamCreateWithPriority", ctypes.byref(handle), CU_STREAM_NON_BLOCKING,
                   priority)
        return handle.value or 0

    def stream_synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", stream)

    def stream_destroy(self, stream: int) -> None:
        self._call("cuStreamDestroy_v2", stream)

    def event_create(self, timing: bool = False) -> int:
        handle = _P()
        self._call("cuEventCreate", ctypes.byref(handle),
                   TIMING_EVENT_FLAGS if timing else EVENT_FLAGS)
        return handle.value or 0

    def event_elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self._call("cuEventElapsedTime", ctypes.byref(ms), start, end)
        return float(ms.value)

    def event_record(self, event: int, stream: int) -> None:
        self._call("cuEventRecord", event, stream)

    def event_synchronize(self, event: int) -> None:
        self._call("cuEventSynchronize", event)

    def event_destroy(self, event: int) -> None:
        self._call("cuEventDestroy_v2", event)

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyHtoDAsync_v2", dst, src, nbytes, stream)

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyDtoHAsync_v2", dst, src, nbytes, stream)

    def ctx_pop(self) -> None:
        popped = _P()
        self._call("cuCtxPopCurrent_v2", ctypes.byref(popped))

    def device_identity(self, ordinal: int) -> tuple[str, tuple[int, int]]:
        self._call("cuInit", 0)
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self._call("cuDeviceGet", ctypes.byref(device), ordinal)
        self._call("cuDeviceGetAttribute", ctypes.byref(major), CC_MAJOR, device)
        self._call("cuDeviceGetAttribute", ctypes.byref(minor), CC_MINOR, device)
        name = ctypes.create_string_buffer(NAME_BYTES)
        self._call("cuDeviceGetName", name, NAME_BYTES, device)
        return name.value.decode(errors="replace"), (major.value, minor.value)

    def host_register(self, host: int, nbytes: int, flags: int) -> int:
        self._call("cuMemHostRegister_v2", host, nbytes, flags)
        if not flags & CU_MEMHOSTREGISTER_DEVICEMAP:
            return 0
        device = ctypes.c_uint64()
        try:
            self._call("cuMemHostGetDevicePointer_v2", ctypes.byref(device), host, 0)
        except CudaDriverError:
            self._call("cuMemHostUnregister", host)
            raise
        return device.value

    def host_unregister(self, host: int) -> None:
        self._call("cuMemHostUnregister", host)

    def host_register_support(self, ordinal: int) -> tuple[bool, bool]:
        device, values = ctypes.c_int(), [ctypes.c_int(), ctypes.c_int()]
        self._call("cuDeviceGet", ctypes.byref(device), ordinal)
        for value, attribute in zip(values, (HOST_REGISTER, READ_ONLY_REGISTER)):
            self._call("cuDeviceGetAttribute", ctypes.byref(value), attribute, device)
        return bool(values[0].value), bool(values[1].value)


# --- cuda-python -------------------------------------------------------------------------------

def import_cuda_python():
    """cuda-python's driver module: `cuda.bindings.driver` (12.6+), else `cuda.cuda`."""
    try:
        from cuda.bindings import driver
        return driver
    except ImportError:
        pass
    try:
        from cuda import cuda as driver
        return driver
    except ImportError:
        return None


class CudaPythonDriver:
    """cuda-python calls return (CUresult, *outputs); handles convert with int()."""

    def __init__(self, module, libcuda=None):
        self._cu = module
        self._waits = CtypesDriver(libcuda) if libcuda is not None else None
        self.name = f"cuda-python:{module.__name__}"

    def _call(self, fn: str, *args):
        result = getattr(self._cu, fn)(*args)
        status = result[0]
        if int(status) != 0:
            raise CudaDriverError(f"{fn} failed: {getattr(status, 'name', status)}")
        return result[1:]

    def priority_range(self) -> tuple[int, int]:
        least, greatest = self._call("cuCtxGetStreamPriorityRange")
        return int(least), int(greatest)

    def stream_create(self, priority: int) -> int:
        (stream,) = self._call("cuStreamCreateWithPriority", CU_STREAM_NON_BLOCKING, priority)
        return int(stream)

    def stream_synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", stream)

    def stream_destroy(self, stream: int) -> None:
        self._call("cuStreamDestroy", stream)

    def event_create(self, timing: bool = False) -> int:
        (event,) = self._call("cuEventCreate", TIMING_EVENT_FLAGS if timing else EVENT_FLAGS)
        return int(event)

    def event_elapsed_ms(self, start: int, end: int) -> float:
        # cuda-bindings 13 renamed it cuEventElapsedTime_v2 (the harness driver does the same)
        fn = "cuEventElapsedTime" if hasattr(self._cu, "cuEventElapsedTime") \
            else "cuEventElapsedTime_v2"
        (ms,) = self._call(fn, start, end)
        return float(ms)

    def event_record(self, event: int, stream: int) -> None:
        self._call("cuEventRecord", event, stream)

    def event_synchronize(self, event: int) -> None:
        if self._waits is not None:
            self._waits.event_synchronize(event)
        else:
            self._call("cuEventSynchronize", event)

    def event_destroy(self, event: int) -> None:
        self._call("cuEventDestroy", event)

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyHtoDAsync", dst, src, nbytes, stream)

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyDtoHAsync", dst, src, nbytes, stream)

    def ctx_pop(self) -> None:
        self._call("cuCtxPopCurrent")

    def device_identity(self, ordinal: int) -> tuple[str, tuple[int, int]]:
        self._call("cuInit", 0)
        (device,) = self._call("cuDeviceGet", ordinal)
        attribute = getattr(self._cu, "CUdevice_attribute", int)   # the enum where it exists
        (major,) = self._call("cuDeviceGetAttribute", attribute(CC_MAJOR), device)
        (minor,) = self._call("cuDeviceGetAttribute", attribute(CC_MINOR), device)
        (name,) = self._call("cuDeviceGetName", NAME_BYTES, device)
        text = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return text, (int(major), int(minor))

    def host_register(self, host: int, nbytes: int, flags: int) -> int:
        self._call("cuMemHostRegister", host, nbytes, flags)
        if not flags & CU_MEMHOSTREGISTER_DEVICEMAP:
            return 0
        try:
            (device,) = self._call("cuMemHostGetDevicePointer", host, 0)
        except CudaDriverError:
            self._call("cuMemHostUnregister", host)
            raise
        return int(device)

    def host_unregister(self, host: int) -> None:
        self._call("cuMemHostUnregister", host)

    def host_register_support(self, ordinal: int) -> tuple[bool, bool]:
        (device,) = self._call("cuDeviceGet", ordinal)
        attribute = getattr(self._cu, "CUdevice_attribute", int)
        (registers,) = self._call("cuDeviceGetAttribute", attribute(HOST_REGISTER), device)
        (read_only,) = self._call("cuDeviceGetAttribute", attribute(READ_ONLY_REGISTER), device)
        return bool(registers), bool(read_only)


def open_driver() -> Driver:
    libcuda = _load_libcuda()
    module = import_cuda_python()
    if module is not None:
        return CudaPythonDriver(module, libcuda)
    if libcuda is None:
        raise BackendUnavailable(f"no CUDA driver API: neither cuda-python nor {LIBCUDA} "
                                 "can be loaded (is the NVIDIA driver installed?)")
    return CtypesDriver(libcuda)
