"""Fake `pycuda` / `pycuda.driver` on the simulated GPU, and the pycuda.autoinit guard."""
from __future__ import annotations

import builtins
import enum
import importlib.abc
import importlib.machinery
import threading
import types

import numpy as np

from tests.fakes_cuda.gpu import DEVICEMAP, Allocation, FakeGpu

# --- pycuda --------------------------------------------------------------------------------------

class _AutoinitGuard(importlib.abc.MetaPathFinder):
    """Importing pycuda.autoinit is a violation (it creates a second, non-primary context)."""

    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "pycuda.autoinit":
            self.gpu.violate("import pycuda.autoinit: it makes a new context, not the primary")
            raise ImportError("pycuda.autoinit is blocked by tests/fakes_cuda/pycuda_driver.py")
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
        gpu.cu_init("pycuda", flags)

    def get_driver_version() -> int:
        return 12020                       # CUDA 12.2 (JetPack 6), encoded as the driver does

    # pycuda keeps its own per-thread stack of Context objects beside the driver's stack of
    # CUcontexts (src/cpp/cuda.hpp: context_stack, prepare_context_switch, detach).
    stacks: dict[int, list] = {}
    gpu.pycuda_stacks = stacks

    def _stack() -> list:
        return stacks.setdefault(threading.get_ident(), [])

    def _current(except_=None):
        stack = _stack()
        while stack:
            top = stack[-1]
            if top is not except_ and top.valid:
                return top
            stack.pop()                     # an invalid (detached) context: dropped
        return None

    def _prepare_switch() -> None:
        if _stack():
            gpu.ctx_pop()

    def _need_current(what: str) -> None:
        if _current() is None:
            raise LogicError(f"{what} failed: invalid context - no currently active context?")

    class Context:
        def __init__(self, handle: int, primary: bool):
            self.handle, self.primary = handle, primary
            self.valid = True
            self.thread = threading.get_ident()     # pycuda's m_thread: where it was made

        def push(self) -> None:
            gpu.record("ctx.push")
            if not self.valid:
                raise LogicError("cannot activate dead context")
            _prepare_switch()
            gpu.ctx_push(self.handle)
            _stack().append(self)

        @staticmethod
        def pop() -> None:
            gpu.record("ctx.pop")
            _prepare_switch()
            stack = _stack()
            if not stack:
                raise LogicError("context::pop failed: invalid context - cannot pop "
                                 "non-current context")
            stack.pop()
            current = _current()
            if current is not None:
                gpu.ctx_push(current.handle)

        def detach(self) -> None:
            """A primary context's detach is cuDevicePrimaryCtxRelease, which never pops."""
            gpu.record("ctx.detach", self.primary)
            if not self.valid:
                raise LogicError("context::detach failed: invalid context - cannot detach from "
                                 "invalid context")
            active = _current() is self
            if active:
                self._release()
            elif self.thread == threading.get_ident():
                gpu.ctx_push(self.handle)   # pushed to release it: "pop is implicit" it is not
                self._release()
            # else: another thread's context; pycuda assumes it is gone and leaks the retain
            self.valid = False
            if active:
                new = _current(except_=self)
                if new is not None:
                    gpu.ctx_push(new.handle)

        def _release(self) -> None:
            if self.primary:
                gpu.release_primary()
            else:                           # cuCtxDetach: destroys and pops a made context
                gpu.ctx_pop()

        @staticmethod
        def get_current():
            return _current()

    class Device:
        def __init__(self, ordinal: int):
            if not gpu.initialized:
                raise LogicError("cuDeviceGet failed: initialization error")
            if ordinal != 0:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.compute_capability

        def get_attribute(self, attr) -> int:
            if not isinstance(attr, device_attribute):
                raise TypeError("get_attribute takes a pycuda.driver.device_attribute")
            return {device_attribute.INTEGRATED: int(gpu.integrated),
                    device_attribute.CAN_MAP_HOST_MEMORY: 1,
                    device_attribute.MULTIPROCESSOR_COUNT: 8}[attr]

        def retain_primary_context(self) -> Context:
            """A new Context object per call, each owning one retain (as pycuda does)."""
            gpu.record("retain_primary_context")
            return Context(gpu.retain(), primary=True)

        def make_context(self, flags: int = 0) -> Context:
            gpu.violate("Device.make_context: a new context, not the primary one")
            context = Context(gpu.handle(), primary=False)
            context.push()
            return context

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
        _need_current("pagelocked_empty")
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
        _need_current("mem_alloc")
        return DeviceAllocation(gpu.allocate("device", nbytes))

    def memcpy_htod(dest, src) -> None:
        """Synchronous host -> device copy of a host buffer (numpy array)."""
        gpu.need_context("cuMemcpyHtoD")
        data = np.frombuffer(memoryview(src).cast("B"), np.uint8)
        view = gpu.device_view(int(dest), data.size, "memcpy_htod")
        gpu.record("memcpy_htod", int(dest), data.size)
        if view is not None:
            view[:] = data

    def memcpy_htod_async(dest, src, stream=None) -> None:
        _pycuda_stream(stream, "memcpy_htod_async")

    def memcpy_dtoh_async(dest, src, stream=None) -> None:
        _pycuda_stream(stream, "memcpy_dtoh_async")

    for name, value in list(locals().items()):
        if name not in ("gpu", "package", "drv", "name", "value") and not name.startswith("_"):
            setattr(drv, name, value)
    return package, drv
