"""Fake CUDA driver API bindings: cuda-python (`cuda.bindings.driver`) and libcuda.so.1."""
from __future__ import annotations

import enum
import importlib.machinery
import types

from tests.fakes_cuda.gpu import ERROR_NAMES, SUCCESS, FakeGpu

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
