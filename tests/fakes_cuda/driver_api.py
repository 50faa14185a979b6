"""Fake CUDA driver API bindings: cuda-python (`cuda.bindings.driver`) and libcuda.so.1."""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import types

from tests.fakes_cuda.gpu import CC_MAJOR, CC_MINOR, ERROR_NAMES, INVALID_VALUE, SUCCESS, FakeGpu

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

    class CUcontext(_Handle):
        pass

    class CUdevice(_Handle):
        pass

    class CUdevice_attribute(enum.IntEnum):
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
        CU_DEVICE_ATTRIBUTE_INTEGRATED = 18
        CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY = 19
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = CC_MAJOR
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = CC_MINOR
        CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED = 99
        CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED = 113

    def _int(handle) -> int:
        return 0 if handle is None else int(handle)

    def cuInit(Flags):
        return (CUresult(gpu.cu_init(via, int(Flags))),)

    def cuDeviceGet(ordinal):
        status, device = gpu.cu_device_get(via, int(ordinal))
        return CUresult(status), CUdevice(device)

    def cuDeviceGetAttribute(attrib, dev):
        status, value = gpu.cu_device_attribute(via, int(attrib), _int(dev))
        return CUresult(status), value

    def cuDeviceGetName(length, dev):
        status, name = gpu.cu_device_name(via, _int(dev))
        return CUresult(status), name[:length - 1].ljust(length, b"\0")

    def cuCtxPopCurrent():
        status, handle = gpu.cu_ctx_pop(via)
        return CUresult(status), CUcontext(handle)

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

    def cuEventElapsedTime(hStart, hEnd):   # noqa: N803 (cuda-python's names)
        status, ms = gpu.cu_event_elapsed(via, _int(hStart), _int(hEnd))
        return CUresult(status), ms

    def cuMemHostRegister(p, bytesize, Flags):
        return (CUresult(gpu.cu_host_register(via, int(p), int(bytesize), int(Flags))),)

    def cuMemHostGetDevicePointer(p, Flags):
        status, device = gpu.cu_host_device_pointer(via, int(p), int(Flags))
        return CUresult(status), CUdeviceptr(device)

    def cuMemHostUnregister(p):
        return (CUresult(gpu.cu_host_unregister(via, int(p))),)

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

# The C signatures of cuda.h (CUresult, CUdevice_attribute: int; CUdevice: int; CUcontext,
# CUstream, CUevent: pointers; CUdeviceptr: unsigned long long), whatever the caller declares.
_P, _I, _U = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
PROTOTYPES = {
    "cuInit": [_U],
    "cuDeviceGet": [ctypes.POINTER(_I), _I],
    "cuDeviceGetAttribute": [ctypes.POINTER(_I), _I, _I],
    "cuDeviceGetName": [ctypes.POINTER(ctypes.c_char), _I, _I],
    "cuCtxPopCurrent_v2": [ctypes.POINTER(_P)],
    "cuCtxPushCurrent_v2": [_P],
    "cuCtxGetStreamPriorityRange": [ctypes.POINTER(_I), ctypes.POINTER(_I)],
    "cuStreamCreateWithPriority": [ctypes.POINTER(_P), _U, _I],
    "cuStreamSynchronize": [_P],
    "cuStreamDestroy_v2": [_P],
    "cuEventCreate": [ctypes.POINTER(_P), _U],
    "cuEventRecord": [_P, _P],
    "cuEventSynchronize": [_P],
    "cuEventQuery": [_P],
    "cuEventDestroy_v2": [_P],
    "cuEventElapsedTime": [ctypes.POINTER(ctypes.c_float), _P, _P],
    "cuMemcpyHtoDAsync_v2": [ctypes.c_uint64, _P, ctypes.c_size_t, _P],
    "cuMemcpyDtoHAsync_v2": [_P, ctypes.c_uint64, ctypes.c_size_t, _P],
    "cuGetErrorName": [_I, ctypes.POINTER(ctypes.c_char_p)],
    "cuMemHostRegister_v2": [_P, ctypes.c_size_t, _U],
    "cuMemHostGetDevicePointer_v2": [ctypes.POINTER(ctypes.c_uint64), _P, _U],
    "cuMemHostUnregister": [_P],
}
_NAMES = {status: name.encode() for status, name in ERROR_NAMES.items()}   # kept alive: C reads
_UNKNOWN = b"CUDA_ERROR_UNKNOWN"


class _FuncPtr(ctypes._CFuncPtr):
    """What `ctypes.CDLL(...).name` is: a C function pointer with no argtypes until the caller
    sets them (a Python int is then passed as a C int: a 64-bit handle is truncated) and an int
    result."""

    _flags_ = ctypes._FUNCFLAG_CDECL
    _restype_ = ctypes.c_int


class FakeLibCuda:
    """What ctypes.CDLL("libcuda.so.1") gives: C function pointers with cuda.h's signatures.
    Each is a real C callback into the fake, so ctypes converts every argument by the argtypes
    the CALLER set, as it would for the real library, and the fake decodes them by the real
    signature: missing or wrong argtypes arrive as truncated handles, and fail."""

    def __init__(self, gpu: FakeGpu):
        via = "libcuda"
        self._thunks = []                     # the callbacks must outlive every call

        def cuInit(flags):
            return gpu.cu_init(via, flags)

        def cuDeviceGet(device, ordinal):
            status, value = gpu.cu_device_get(via, ordinal)
            device[0] = value
            return status

        def cuDeviceGetAttribute(value, attribute, device):
            status, result = gpu.cu_device_attribute(via, attribute, device)
            value[0] = result
            return status

        def cuDeviceGetName(name, length, device):
            status, text = gpu.cu_device_name(via, device)
            data = text[:max(length - 1, 0)] + b"\0"
            ctypes.memmove(name, data, min(len(data), length))
            return status

        def cuCtxPopCurrent_v2(popped):
            status, handle = gpu.cu_ctx_pop(via)
            if popped:
                popped[0] = handle or None
            return status

        def cuCtxPushCurrent_v2(context):
            gpu.ctx_push(context or 0)
            return SUCCESS

        def cuCtxGetStreamPriorityRange(least, greatest):
            status, lo, hi = gpu.cu_priority_range(via)
            least[0], greatest[0] = lo, hi
            return status

        def cuStreamCreateWithPriority(stream, flags, priority):
            status, handle = gpu.cu_stream_create(via, flags, priority)
            stream[0] = handle or None
            return status

        def cuStreamSynchronize(stream):
            return gpu.cu_stream_synchronize(via, stream or 0)

        def cuStreamDestroy_v2(stream):
            return gpu.cu_stream_destroy(via, stream or 0)

        def cuEventCreate(event, flags):
            status, handle = gpu.cu_event_create(via, flags)
            event[0] = handle or None
            return status

        def cuEventRecord(event, stream):
            return gpu.cu_event_record(via, event or 0, stream or 0)

        def cuEventSynchronize(event):
            return gpu.cu_event_synchronize(via, event or 0)

        def cuEventQuery(event):
            return gpu.cu_event_query(via, event or 0)

        def cuEventDestroy_v2(event):
            return gpu.cu_event_destroy(via, event or 0)

        def cuEventElapsedTime(ms, start, end):
            status, value = gpu.cu_event_elapsed(via, start or 0, end or 0)
            ms[0] = value
            return status

        def cuMemcpyHtoDAsync_v2(dst, src, nbytes, stream):
            return gpu.cu_memcpy(via, "HtoD", dst, src or 0, nbytes, stream or 0)

        def cuMemcpyDtoHAsync_v2(dst, src, nbytes, stream):
            return gpu.cu_memcpy(via, "DtoH", dst or 0, src, nbytes, stream or 0)

        def cuMemHostRegister_v2(host, nbytes, flags):
            return gpu.cu_host_register(via, host or 0, nbytes, flags)

        def cuMemHostGetDevicePointer_v2(device, host, flags):
            status, value = gpu.cu_host_device_pointer(via, host or 0, flags)
            device[0] = value
            return status

        def cuMemHostUnregister(host):
            return gpu.cu_host_unregister(via, host or 0)

        def cuGetErrorName(status, text):
            text[0] = _NAMES.get(status, _UNKNOWN)
            return SUCCESS

        for name, impl in list(locals().items()):
            if name in PROTOTYPES:
                setattr(self, name, self._export(gpu, name, impl))

    def _export(self, gpu: FakeGpu, name: str, impl) -> _FuncPtr:
        def guarded(*args):
            try:
                return impl(*args)
            except Exception as e:     # ctypes would print it and return garbage
                gpu.violate(f"{name}{args}: the fake failed: {e!r}")
                return INVALID_VALUE
        thunk = ctypes.CFUNCTYPE(ctypes.c_int, *PROTOTYPES[name])(guarded)
        self._thunks.append(thunk)
        return _FuncPtr(ctypes.cast(thunk, ctypes.c_void_p).value)
