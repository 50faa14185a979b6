"""The simulated GPU: driver state, memory, streams and events, and the contract checks."""
from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tests.fakes_cuda.host_register import (
    ALREADY_REGISTERED,
    NOT_REGISTERED,
    HostRegisterMixin,
    Registration,
)
from tests.fakes_cuda.lifetimes import Lifetimes

SUCCESS, INVALID_VALUE, NOT_INITIALIZED, INVALID_DEVICE = 0, 1, 3, 101
INVALID_CONTEXT, INVALID_HANDLE, NOT_READY = 201, 400, 600
ERROR_NAMES = {SUCCESS: "CUDA_SUCCESS", INVALID_VALUE: "CUDA_ERROR_INVALID_VALUE",
               NOT_INITIALIZED: "CUDA_ERROR_NOT_INITIALIZED",
               INVALID_DEVICE: "CUDA_ERROR_INVALID_DEVICE",
               INVALID_CONTEXT: "CUDA_ERROR_INVALID_CONTEXT",
               INVALID_HANDLE: "CUDA_ERROR_INVALID_HANDLE", NOT_READY: "CUDA_ERROR_NOT_READY",
               ALREADY_REGISTERED: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
               NOT_REGISTERED: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"}
DEFAULT_STREAMS = (0, 1, 2)           # NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
NON_BLOCKING, BLOCKING_SYNC, DISABLE_TIMING = 0x1, 0x1, 0x2
DEVICEMAP = 0x2
CC_MAJOR, CC_MINOR = 75, 76           # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
# Handles and addresses are above 2**32, like real ones: a ctypes call without argtypes (or with
# c_int where a pointer goes) cannot pass them, or truncates them into unknown handles.
PRIMARY_HANDLE = 0x7F3A_5000_0000     # the primary context's CUcontext
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
    tail_us: float = 0.0              # virtual device time when its last enqueued work ends
    trt_used: bool = False            # TensorRT work was queued on it (execute, profile switch)


@dataclass
class Event:
    handle: int
    flags: int
    done: threading.Event = field(default_factory=threading.Event)
    recorded_on: int | None = None
    destroyed: bool = False
    time_us: float | None = None      # its stream's virtual time when recorded


class FakeGpu(HostRegisterMixin, Lifetimes):
    """The simulated device and its driver state, shared by all the fake modules."""

    def __init__(self, integrated: bool = True, priority_range: tuple[int, int] = (0, -5)):
        self.integrated = integrated
        self.least, self.greatest = priority_range
        self.name = "Fake Orin (integrated)" if integrated else "Fake discrete GPU"
        self.compute_capability = (8, 7) if integrated else (9, 0)
        self.dla_cores = 2 if integrated else 0
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.fail_execute: Callable[[str, dict], bool] | None = None
        # each execute's virtual duration is the engine's times this (a co-runner's effect)
        self.slowdown: Callable[[], float] = lambda: 1.0
        self.initialized = False          # cuInit called (by any binding)
        self.retains = 0                  # cuDevicePrimaryCtxRetain - Release
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.device: dict[int, Allocation] = {}     # device address -> allocation
        self.host: dict[int, Allocation] = {}       # host address -> pinned/mapped allocation
        self.registered: dict[int, Registration] = {}   # cuMemHostRegister'd, by host address
        self.host_register_supported = True             # CU_DEVICE_ATTRIBUTE_ 99 and 113
        self.read_only_register_supported = True
        self._contexts: list[weakref.ref] = []      # every execution context created
        # TensorRT objects alive (tensorrt_runtime.py, tensorrt_context.py): (kind, id) ->
        # (name, device bytes it holds); `trt_freed` lists what was destroyed, in order.
        self.trt_live: dict[tuple[str, int], tuple[str, int]] = {}
        self.trt_freed: list[tuple[str, str]] = []
        self._stacks: dict[int, list[int]] = {}     # thread ident -> the DRIVER's context stack
        self.pycuda_stacks: dict[int, list] = {}    # thread ident -> pycuda's own (make_pycuda)
        self._lock = threading.RLock()
        self._hold = False
        self._pending: list[Event] = []
        self._handles = itertools.count(0x7E10_0000_0000, 0x100)
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
        if not stack or stack[-1] != PRIMARY_HANDLE or self.retains <= 0:
            self.violate(f"{op} without the retained primary context pushed on this thread")
            return False
        return True

    # the driver's per-thread current-context stack (cuCtxPushCurrent / cuCtxPopCurrent)
    def ctx_push(self, handle: int) -> None:
        self.record("cuCtxPushCurrent", handle)
        with self._lock:
            self._stacks.setdefault(threading.get_ident(), []).append(handle)

    def ctx_pop(self) -> tuple[int, int]:
        self.record("cuCtxPopCurrent")
        with self._lock:
            stack = self._stacks.get(threading.get_ident())
            if not stack:
                return INVALID_CONTEXT, 0
            return SUCCESS, stack.pop()

    def current(self) -> int | None:
        stack = self._stacks.get(threading.get_ident())
        return stack[-1] if stack else None

    def retain(self) -> int:
        self.record("cuDevicePrimaryCtxRetain")
        with self._lock:
            self.retains += 1
        return PRIMARY_HANDLE

    def release_primary(self) -> None:
        """cuDevicePrimaryCtxRelease: never pops the context from any thread's stack."""
        self.record("cuDevicePrimaryCtxRelease")
        with self._lock:
            if self.retains <= 0:
                self.violate("cuDevicePrimaryCtxRelease without a retain")
            self.retains -= 1
            last = self.retains == 0
        if last:
            self._trt_alive("the primary context released")
            if self.live_allocations():
                self.violate(f"the primary context released with {len(self.live_allocations())}"
                             " allocation(s) never freed")

    def unbalanced(self) -> dict[int, int]:
        """Threads whose driver stack still holds contexts."""
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
        for context in self.contexts:
            if context.running() and alloc.device_ptr in context.addresses.values():
                self.violate(f"{alloc.kind} allocation {alloc.device_ptr:#x} freed while "
                             f"execution context {context.id}, which reads it, runs")
        alloc.freed = True
        self.record("free", alloc.kind, alloc.device_ptr or alloc.host_ptr)

    def device_view(self, ptr: int, nbytes: int, what: str) -> np.ndarray | None:
        alloc = self.device.get(ptr)
        if alloc is None:
            inside = self._registered_at(ptr, nbytes, device=True)
            if inside is not None:
                return inside
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

    def cu_init(self, via: str, flags: int) -> int:
        self.record("cuInit", via, int(flags))
        self.initialized = True
        return SUCCESS

    def cu_device_get(self, via: str, ordinal: int) -> tuple[int, int]:
        self.record("cuDeviceGet", via, int(ordinal))
        if not self.initialized:
            return NOT_INITIALIZED, 0
        return (SUCCESS, 0) if int(ordinal) == 0 else (INVALID_DEVICE, 0)

    def cu_device_attribute(self, via: str, attribute: int, device: int) -> tuple[int, int]:
        self.record("cuDeviceGetAttribute", via, int(attribute), int(device))
        if not self.initialized:
            return NOT_INITIALIZED, 0
        values = {CC_MAJOR: self.compute_capability[0], CC_MINOR: self.compute_capability[1],
                  18: int(self.integrated), 19: 1, 16: 8,   # INTEGRATED, CAN_MAP_HOST, SMs
                  99: int(self.host_register_supported),
                  113: int(self.read_only_register_supported)}
        if int(device) != 0:
            return INVALID_DEVICE, 0
        if int(attribute) not in values:
            return INVALID_VALUE, 0
        return SUCCESS, values[int(attribute)]

    def cu_device_name(self, via: str, device: int) -> tuple[int, bytes]:
        self.record("cuDeviceGetName", via, int(device))
        if not self.initialized:
            return NOT_INITIALIZED, b""
        return (SUCCESS, self.name.encode()) if int(device) == 0 else (INVALID_DEVICE, b"")

    def cu_ctx_pop(self, via: str) -> tuple[int, int]:
        self.record("cuCtxPopCurrent_api", via)
        return self.ctx_pop()

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
        if stream.trt_used:
            self._trt_alive(f"stream {handle:#x} destroyed")
        stream.destroyed = True
        return SUCCESS

    def cu_stream_synchronize(self, via: str, handle: int) -> int:
        self.record("cuStreamSynchronize", via, handle)
        self.need_context("cuStreamSynchronize")
        if not self._live_stream(handle, "cuStreamSynchronize"):
            return INVALID_HANDLE
        for context in self.contexts:           # profile switches queued there are done
            if getattr(context, "switched_on", None) == handle:
                context.switched_on = None
        return SUCCESS

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
        event.time_us = stream.tail_us
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

    def cu_event_elapsed(self, via: str, start: int, end: int) -> tuple[int, float]:
        """cuEventElapsedTime: ms of virtual device time between two completed records."""
        self.record("cuEventElapsedTime", via, start, end)
        self.need_context("cuEventElapsedTime")
        a, b = self.events.get(start), self.events.get(end)
        if a is None or b is None or a.destroyed or b.destroyed or a.time_us is None or \
                b.time_us is None:
            self.violate("cuEventElapsedTime on an event never recorded or destroyed")
            return INVALID_HANDLE, 0.0
        if (a.flags | b.flags) & DISABLE_TIMING:
            self.violate("cuEventElapsedTime on an event made with DISABLE_TIMING")
            return INVALID_HANDLE, 0.0
        if not (a.done.is_set() and b.done.is_set()):
            return NOT_READY, 0.0
        return SUCCESS, (b.time_us - a.time_us) / 1e3

    def cu_event_destroy(self, via: str, handle: int) -> int:
        self.record("cuEventDestroy", via, handle)
        self.need_context("cuEventDestroy")
        event = self.events.get(handle)
        if event is None or event.destroyed:
            self.violate(f"cuEventDestroy of {handle:#x}, not a live event")
            return INVALID_HANDLE
        recorded_on = self.streams.get(event.recorded_on)
        if recorded_on is not None and recorded_on.trt_used:
            self._trt_alive(f"event {handle:#x} destroyed")
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
        registered = None if host is not None else self._registered_at(host_ptr, int(nbytes),
                                                                         device=False)
        if registered is not None and direction == "HtoD":   # from registered (pinned) pages
            device = self.device_view(dev_ptr, int(nbytes), op)
            if device is None:
                return INVALID_VALUE
            device[:] = registered
            return SUCCESS
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
