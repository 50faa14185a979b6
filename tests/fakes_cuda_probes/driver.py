"""A fake `cuda.bindings.driver` on a FakeGpu: the calls the CUDA harness makes, with
cuda-python's conventions (every call returns (CUresult, *outputs); handles are objects that
int() converts; typed enum arguments refuse plain ints) and the checks in __init__.py."""
from __future__ import annotations

import ctypes
import enum
import threading
import types

from tests.fakes_cuda_probes.gpu import (
    BLOCKING_SYNC,
    DEVICEMAP,
    DISABLE_TIMING,
    ERROR_NAMES,
    INTERPROCESS,
    INVALID_CONTEXT,
    INVALID_HANDLE,
    INVALID_VALUE,
    LAUNCH_MS,
    MAX_BLOCK,
    MAX_GRID,
    MAX_SHARED_BYTES,
    MAX_THREADS_PER_BLOCK,
    NO_DEVICE,
    NON_BLOCKING,
    NOT_FOUND,
    NOT_INITIALIZED,
    NOT_READY,
    PTX_TYPES,
    SUCCESS,
    Allocation,
    Event,
    FakeGpu,
    Stream,
    int_of,
)

CUresult = enum.IntEnum("CUresult", {v: k for k, v in ERROR_NAMES.items()})
CUdevice_attribute = enum.IntEnum("CUdevice_attribute", {f"CU_DEVICE_ATTRIBUTE_{k}": v for k, v in {
    "MAX_THREADS_PER_BLOCK": 1, "MAX_BLOCK_DIM_X": 2, "MAX_BLOCK_DIM_Y": 3, "MAX_BLOCK_DIM_Z": 4,
    "MAX_GRID_DIM_X": 5, "MAX_GRID_DIM_Y": 6, "MAX_GRID_DIM_Z": 7, "CLOCK_RATE": 13,
    "MULTIPROCESSOR_COUNT": 16, "INTEGRATED": 18, "CAN_MAP_HOST_MEMORY": 19,
    "CONCURRENT_KERNELS": 31, "MEMORY_CLOCK_RATE": 36, "GLOBAL_MEMORY_BUS_WIDTH": 37,
    "L2_CACHE_SIZE": 38, "MAX_THREADS_PER_MULTIPROCESSOR": 39, "UNIFIED_ADDRESSING": 41,
    "COMPUTE_CAPABILITY_MAJOR": 75, "COMPUTE_CAPABILITY_MINOR": 76}.items()})
CUfunction_attribute = enum.IntEnum("CUfunction_attribute", {
    "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK": 0, "CU_FUNC_ATTRIBUTE_NUM_REGS": 4})


class _Handle:
    def __init__(self, init_value=0):
        self._value = int(init_value or 0)

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._value:#x}>"


class CUdevice(_Handle): ...
class CUcontext(_Handle): ...
class CUstream(_Handle): ...
class CUevent(_Handle): ...
class CUmodule(_Handle): ...
class CUfunction(_Handle): ...
class CUdeviceptr(_Handle): ...


def make_driver(gpu: FakeGpu, *, no_driver: bool = False) -> types.ModuleType:
    """The module; no_driver: cuInit raises as cuda-python does when libcuda.so.1 is absent."""
    drv = types.ModuleType("fake.cuda.bindings.driver")
    spec = gpu.spec

    def r(status, *outputs):
        return (CUresult(status), *outputs)

    def guarded(fn):
        """Calls that need an initialized driver and the primary context current."""
        def call(*args):
            status = gpu.needs_context(fn.__name__) if gpu.initialized else NOT_INITIALIZED
            return r(status, None) if status else fn(*args)
        call.__name__ = fn.__name__
        return call

    # --- driver, device, primary context --------------------------------------------------

    def cuInit(flags):
        if no_driver:
            raise RuntimeError("Failed to dlopen libcuda.so.1")
        if spec.devices == 0:
            return r(NO_DEVICE)
        gpu.initialized = flags == 0
        return r(SUCCESS if flags == 0 else INVALID_VALUE)

    def cuDriverGetVersion():
        return r(SUCCESS, 12060)

    def cuDeviceGetCount():
        return r(SUCCESS, spec.devices) if gpu.initialized else r(NOT_INITIALIZED, None)

    def cuDeviceGet(ordinal):
        ok = gpu.initialized and 0 <= ordinal < spec.devices
        return r(SUCCESS, CUdevice(ordinal)) if ok else r(INVALID_VALUE, None)

    def cuDeviceGetName(length, dev):
        return r(SUCCESS, spec.name.encode().ljust(length, b"\0")[:length])

    def cuDeviceGetAttribute(attrib, dev):
        if not isinstance(attrib, CUdevice_attribute):
            raise TypeError(f"Argument 'attrib' has incorrect type (expected CUdevice_attribute, "
                            f"got {type(attrib).__name__})")
        values = {"MAX_THREADS_PER_BLOCK": MAX_THREADS_PER_BLOCK, "MAX_BLOCK_DIM_X": MAX_BLOCK[0],
                  "MAX_BLOCK_DIM_Y": MAX_BLOCK[1], "MAX_BLOCK_DIM_Z": MAX_BLOCK[2],
                  "MAX_GRID_DIM_X": MAX_GRID[0], "MAX_GRID_DIM_Y": MAX_GRID[1],
                  "MAX_GRID_DIM_Z": MAX_GRID[2], "CLOCK_RATE": spec.clock_khz,
                  "MULTIPROCESSOR_COUNT": spec.sms, "INTEGRATED": int(spec.integrated),
                  "CAN_MAP_HOST_MEMORY": int(spec.can_map_host), "CONCURRENT_KERNELS": 1,
                  "MEMORY_CLOCK_RATE": spec.memory_clock_khz,
                  "GLOBAL_MEMORY_BUS_WIDTH": spec.bus_width_bits, "L2_CACHE_SIZE": spec.l2_bytes,
                  "MAX_THREADS_PER_MULTIPROCESSOR": spec.max_threads_per_sm,
                  "UNIFIED_ADDRESSING": 1, "COMPUTE_CAPABILITY_MAJOR": spec.cc[0],
                  "COMPUTE_CAPABILITY_MINOR": spec.cc[1]}
        return r(SUCCESS, values[attrib.name.removeprefix("CU_DEVICE_ATTRIBUTE_")])

    def cuDevicePrimaryCtxRetain(dev):
        if not gpu.initialized:
            return r(NOT_INITIALIZED, None)
        gpu.retains += 1
        return r(SUCCESS, CUcontext(gpu.context))

    def cuDevicePrimaryCtxRelease(dev):
        if gpu.retains <= 0:
            gpu.violate("retain", "cuDevicePrimaryCtxRelease without a matching retain")
            return r(INVALID_CONTEXT)
        gpu.retains -= 1
        return r(SUCCESS)

    def cuDevicePrimaryCtxGetState(dev):
        return r(SUCCESS, 0, int(gpu.retains > 0))

    def cuCtxCreate(*args):
        gpu.violate("retain", "cuCtxCreate: a new context, not the device's primary one")
        return r(INVALID_VALUE, None)

    def cuCtxPushCurrent(ctx):
        if int_of(ctx) != gpu.context or gpu.retains <= 0:
            gpu.violate("context", "cuCtxPushCurrent of a context that is not retained")
            return r(INVALID_CONTEXT)
        gpu.stacks.setdefault(threading.get_ident(), []).append(int_of(ctx))
        return r(SUCCESS)

    def cuCtxPopCurrent():
        stack = gpu.stacks.get(threading.get_ident(), [])
        if not stack:
            gpu.violate("context", "cuCtxPopCurrent with nothing pushed on this thread")
            return r(INVALID_CONTEXT, None)
        return r(SUCCESS, CUcontext(stack.pop()))

    def cuCtxGetCurrent():
        return r(SUCCESS, CUcontext(gpu.current()))

    # --- streams and events -----------------------------------------------------------------

    @guarded
    def cuCtxGetStreamPriorityRange():
        return r(SUCCESS, *spec.priority_range)

    @guarded
    def cuStreamCreateWithPriority(flags, priority):
        if flags != NON_BLOCKING:
            gpu.violate("stream", f"stream flags {flags}: not CU_STREAM_NON_BLOCKING")
        least, greatest = spec.priority_range
        s = Stream(gpu.handle(), min(least, max(greatest, priority)))   # the driver clamps
        gpu.streams[s.handle] = s
        return r(SUCCESS, CUstream(s.handle))

    def _stream(handle, fn) -> Stream | None:
        if int_of(handle) == 0:     # works, but waits for every stream: never on our path
            gpu.violate("stream", f"{fn} on the legacy default stream")
            return Stream(0, 0, tail=max([0.0, *(s.tail for s in gpu.streams.values())]))
        s = gpu.streams.get(int_of(handle))
        if s is None or not s.alive:
            gpu.violate("stream", f"{fn} on a stream that does not exist")
            return None
        return s

    @guarded
    def cuStreamGetPriority(stream):
        s = _stream(stream, "cuStreamGetPriority")
        return r(SUCCESS, s.priority) if s else r(INVALID_HANDLE, None)

    def cuStreamDestroy(stream):
        s = gpu.streams.get(int_of(stream))
        if s is None or not s.alive:
            return r(INVALID_HANDLE)
        s.alive = False
        return r(SUCCESS)

    @guarded
    def cuEventCreate(flags):
        if flags & ~(BLOCKING_SYNC | DISABLE_TIMING | INTERPROCESS) or (
                flags & INTERPROCESS and not flags & DISABLE_TIMING):
            gpu.violate("event-flags", f"cuEventCreate flags {flags:#x}")
            return r(INVALID_VALUE, None)
        e = Event(gpu.handle(), flags)
        gpu.events[e.handle] = e
        return r(SUCCESS, CUevent(e.handle))

    def _event(handle) -> Event | None:
        e = gpu.events.get(int_of(handle))
        return e if e is not None and e.alive else None

    @guarded
    def cuEventRecord(event, stream):
        e, s = _event(event), _stream(stream, "cuEventRecord")
        if e is None or s is None:
            return r(INVALID_HANDLE)
        e.time = max(gpu.now, s.tail)
        return r(SUCCESS)

    @guarded
    def cuEventQuery(event):
        e = _event(event)
        if e is None:
            return r(INVALID_HANDLE)
        return r(NOT_READY if e.time is not None and e.time > gpu.now else SUCCESS)

    @guarded
    def cuEventSynchronize(event):
        e = _event(event)
        if e is None:
            return r(INVALID_HANDLE)
        if not e.flags & BLOCKING_SYNC:
            gpu.violate("wait", "cuEventSynchronize on an event without BLOCKING_SYNC spins "
                        "a CPU core")
        if e.time is not None:
            gpu.now = max(gpu.now, e.time)
        return r(SUCCESS)

    @guarded
    def cuEventElapsedTime(start, end):
        a, b = _event(start), _event(end)
        if a is None or b is None or a.time is None or b.time is None:
            gpu.violate("elapsed", "cuEventElapsedTime on an event never recorded")
            return r(INVALID_HANDLE, None)
        if (a.flags | b.flags) & DISABLE_TIMING:
            gpu.violate("elapsed", "cuEventElapsedTime on an event made with DISABLE_TIMING")
            return r(INVALID_HANDLE, None)
        if max(a.time, b.time) > gpu.now:
            gpu.violate("elapsed", "cuEventElapsedTime before both events completed")
            return r(NOT_READY, None)
        return r(SUCCESS, float(b.time - a.time))

    def cuEventDestroy(event):
        e = _event(event)
        if e is None:
            return r(INVALID_HANDLE)
        e.alive = False
        return r(SUCCESS)

    # --- memory -----------------------------------------------------------------------------

    @guarded
    def cuMemAlloc(nbytes):
        a = Allocation(gpu.address(nbytes), nbytes, "device")
        gpu.allocations[a.address] = a
        return r(SUCCESS, CUdeviceptr(a.address))

    def cuMemFree(dptr):
        a = gpu.allocations.get(int_of(dptr))
        if a is None or a.kind != "device":
            return r(INVALID_VALUE)
        del gpu.allocations[a.address]
        return r(SUCCESS)

    @guarded
    def cuMemHostAlloc(nbytes, flags):
        buffer = ctypes.create_string_buffer(nbytes)
        a = Allocation(gpu.address(nbytes), nbytes, "host", buffer, ctypes.addressof(buffer),
                       bool(flags & DEVICEMAP))
        gpu.host[a.host_address] = a
        return r(SUCCESS, a.host_address)

    @guarded
    def cuMemHostGetDevicePointer(p, flags):
        a = gpu.host.get(int(p))
        if a is None or not a.mapped or flags != 0:
            gpu.violate("memory", "cuMemHostGetDevicePointer: not DEVICEMAP host memory, or "
                        "flags != 0")
            return r(INVALID_VALUE, None)
        gpu.allocations[a.address] = a          # a distinct device address: not the host one
        return r(SUCCESS, CUdeviceptr(a.address))

    def cuMemFreeHost(p):
        a = gpu.host.pop(int(p), None)
        if a is None:
            return r(INVALID_VALUE)
        gpu.allocations.pop(a.address, None)
        return r(SUCCESS)

    # --- modules, functions, launches ---------------------------------------------------------

    @guarded
    def cuModuleLoadData(image):
        status, entries = gpu.parse_image(image)
        if status:
            return r(status, None)
        handle = gpu.handle()
        gpu.modules[handle] = {"functions": entries, "loaded": True}
        return r(SUCCESS, CUmodule(handle))

    @guarded
    def cuModuleGetFunction(module, name):
        if not isinstance(name, bytes):
            raise TypeError("expected bytes, str found")
        m = gpu.modules.get(int_of(module))
        if m is None or not m["loaded"]:
            gpu.violate("module", "cuModuleGetFunction on a module never loaded or unloaded")
            return r(INVALID_HANDLE, None)
        if name.decode() not in m["functions"]:
            return r(NOT_FOUND, None)
        handle = gpu.handle()
        gpu.functions[handle] = (int_of(module), name.decode(), m["functions"][name.decode()])
        return r(SUCCESS, CUfunction(handle))

    def cuModuleUnload(module):
        m = gpu.modules.get(int_of(module))
        if m is None or not m["loaded"]:
            return r(INVALID_HANDLE)
        m["loaded"] = False
        return r(SUCCESS)

    def _function(f, fn):
        entry = gpu.functions.get(int_of(f))
        if entry is None or not gpu.modules[entry[0]]["loaded"]:
            gpu.violate("module", f"{fn} on a function whose module is not loaded")
            return None
        return entry

    @guarded
    def cuFuncGetAttribute(attrib, f):
        if not isinstance(attrib, CUfunction_attribute):
            raise TypeError("Argument 'attrib' has incorrect type")
        entry = _function(f, "cuFuncGetAttribute")
        if entry is None:
            return r(INVALID_HANDLE, None)
        value = spec.registers.get(entry[1], 32) if attrib.name.endswith("NUM_REGS") \
            else MAX_THREADS_PER_BLOCK
        return r(SUCCESS, value)

    @guarded
    def cuOccupancyMaxActiveBlocksPerMultiprocessor(f, block, smem):
        entry = _function(f, "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        if entry is None:
            return r(INVALID_HANDLE, None)
        return r(SUCCESS, gpu.blocks_per_sm(entry[1], block))

    @guarded
    def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        entry = _function(f, "cuLaunchKernel")
        if entry is None:
            return r(INVALID_HANDLE)
        _, name, ptx_types = entry
        if not (all(1 <= g <= m for g, m in zip((gx, gy, gz), MAX_GRID))
                and all(1 <= b <= m for b, m in zip((bx, by, bz), MAX_BLOCK))
                and bx * by * bz <= MAX_THREADS_PER_BLOCK and 0 <= smem <= MAX_SHARED_BYTES):
            gpu.violate("launch-dims", f"{name}: grid ({gx}, {gy}, {gz}), block ({bx}, {by}, "
                        f"{bz}), {smem} B shared")
            return r(INVALID_VALUE)
        s = _stream(stream, "cuLaunchKernel")
        if s is None:
            return r(INVALID_HANDLE)
        if extra not in (0, None):
            gpu.violate("launch-params", f"{name}: `extra` given")
            return r(INVALID_VALUE)
        args = _unpack(name, ptx_types, params)
        if args is None:
            return r(INVALID_VALUE)
        if gy != 1 or gz != 1 or by != 1 or bz != 1:
            gpu.violate("launch-dims", f"{name}: the probes are 1-D")
        gpu.run(name, args, gx, bx, s)
        gpu.now += LAUNCH_MS
        return r(SUCCESS)

    def _unpack(name, ptx_types, params) -> list | None:
        if not (isinstance(params, tuple) and len(params) == 2
                and all(isinstance(p, tuple) for p in params)):
            gpu.violate("launch-params", f"{name}: kernelParams is not ((values), (types))")
            return None
        values, ctypes_ = params
        if len(values) != len(ctypes_) or len(values) != len(ptx_types):
            gpu.violate("launch-params", f"{name}: {len(values)} values / {len(ctypes_)} types "
                        f"for {len(ptx_types)} parameters")
            return None
        out = []
        for i, (value, ctype, ptx) in enumerate(zip(values, ctypes_, ptx_types)):
            if ctype not in PTX_TYPES.get(ptx, ()):
                gpu.violate("launch-params", f"{name}: parameter {i} is .{ptx}, packed as "
                            f"{getattr(ctype, '__name__', ctype)}")
                return None
            if ctype is ctypes.c_void_p and type(value) is not int:
                # cuda-python would pack the address of the handle object, not the pointer
                gpu.violate("launch-params", f"{name}: parameter {i} is a "
                            f"{type(value).__name__}, not int(pointer)")
                return None
            converted = ctype(value).value        # raises TypeError as cuda-python's packing
            converted = 0 if converted is None else converted
            if converted != value and not (ctype is ctypes.c_float and abs(converted - value)
                                           <= 1e-6 * abs(value)):
                gpu.violate("launch-params", f"{name}: parameter {i} = {value!r} does not fit "
                            f"{ctype.__name__}")
                return None
            out.append(converted)
        return out

    for name, value in list(locals().items()):
        if name.startswith("cu") and callable(value):
            setattr(drv, name, value)
    for cls in (CUresult, CUdevice_attribute, CUfunction_attribute, CUdevice, CUcontext,
                CUstream, CUevent, CUmodule, CUfunction, CUdeviceptr):
        setattr(drv, cls.__name__, cls)
    return drv
