"""The fake device behind the fake driver: objects, the rules they enforce, a virtual timeline.

Time is virtual (ms). The host clock `now` moves only when the host waits (or by LAUNCH_MS per
launch); a kernel starts at max(now, its stream's tail) and lasts what `duration_ms` says; an
event completes at its stream's tail when recorded. Contention is a cartoon, not a model: it
exists so the harness's wiring shows (a victim beside compute load slows more than beside
memory load; a full-wave load serializes what comes after it at equal priority; a
higher-priority victim waits one block of a multi-wave load, not the whole load).
"""
from __future__ import annotations

import ctypes
import math
import re
import threading
from dataclasses import dataclass, field

import numpy as np

SUCCESS, INVALID_VALUE, NOT_INITIALIZED, NO_DEVICE = 0, 1, 3, 100
INVALID_IMAGE, INVALID_CONTEXT, NO_BINARY_FOR_GPU, INVALID_PTX = 200, 201, 209, 218
INVALID_HANDLE, NOT_FOUND, NOT_READY, ILLEGAL_ADDRESS = 400, 500, 600, 700
ERROR_NAMES = {0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 3: "CUDA_ERROR_NOT_INITIALIZED",
               100: "CUDA_ERROR_NO_DEVICE", 200: "CUDA_ERROR_INVALID_IMAGE",
               201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
               218: "CUDA_ERROR_INVALID_PTX", 400: "CUDA_ERROR_INVALID_HANDLE",
               500: "CUDA_ERROR_NOT_FOUND", 600: "CUDA_ERROR_NOT_READY",
               700: "CUDA_ERROR_ILLEGAL_ADDRESS"}
BLOCKING_SYNC, DISABLE_TIMING, INTERPROCESS = 0x1, 0x2, 0x4
NON_BLOCKING, DEVICEMAP = 0x1, 0x2
LAUNCH_MS = 0.005                      # host time per launch: later launches start later
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED_BYTES = 48 << 10
FLOP_LANES_PER_SM = 128                # FP32 FMA lanes per SM (Ampere-like)
# PTX parameter type -> the ctypes types cuLaunchKernel may pack for it
PTX_TYPES = {
    "u64": {ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t},
    "s64": {ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t},
    "b64": {ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t},
    "u32": {ctypes.c_int, ctypes.c_uint}, "s32": {ctypes.c_int, ctypes.c_uint},
    "b32": {ctypes.c_int, ctypes.c_uint}, "f32": {ctypes.c_float}, "f64": {ctypes.c_double},
}
ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
PARAM = re.compile(r"\.param\s+\.(\w+)\s+\w+")
TARGET = re.compile(r"\.target\s+sm_(\d+)")
# Contention weights (victim kind, load kind): added slowdown per unit of the load's SM fraction
WEIGHTS = {("compute", "compute"): 0.9, ("compute", "memory"): 0.15,
           ("memory", "compute"): 0.1, ("memory", "memory"): 0.9}


@dataclass
class Spec:
    name: str = "Fake Orin (edgesched tests)"
    cc: tuple[int, int] = (8, 7)
    sms: int = 16
    clock_khz: int = 1_300_000
    memory_clock_khz: int = 3_200_000
    bus_width_bits: int = 256
    bandwidth_gbs: float = 204.8
    l2_bytes: int = 4 << 20
    max_threads_per_sm: int = 1536
    max_blocks_per_sm: int = 16
    integrated: bool = True
    can_map_host: bool = True
    priority_range: tuple[int, int] = (0, -5)
    devices: int = 1
    registers: dict = field(default_factory=lambda: {"compute_probe": 32, "memory_probe": 40})


@dataclass
class Stream:
    handle: int
    priority: int
    tail: float = 0.0                  # ms: when its last enqueued work ends
    alive: bool = True


@dataclass
class Event:
    handle: int
    flags: int
    time: float | None = None          # ms, once recorded
    alive: bool = True


@dataclass
class Allocation:
    address: int                       # what the device sees
    nbytes: int
    kind: str                          # device | host
    backing: object = None             # ctypes buffer for host memory
    host_address: int = 0
    mapped: bool = False


@dataclass
class Kernel:
    name: str
    stream: int
    priority: int
    kind: str                          # compute | memory
    grid: int
    sm_fraction: float
    waves: int
    block_ms: float
    start: float
    end: float


class FakeGpu:
    def __init__(self, spec: Spec | None = None):
        self.spec = spec or Spec()
        self.violations: list[str] = []
        self.initialized = False
        self.retains = 0
        self.stacks: dict[int, list[int]] = {}           # thread -> pushed contexts
        self.context = 0x7C0                             # the primary context's handle
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.allocations: dict[int, Allocation] = {}     # by device address
        self.host: dict[int, Allocation] = {}            # cuMemHostAlloc, by host address
        self.modules: dict[int, dict] = {}               # handle -> {"functions", "loaded"}
        self.functions: dict[int, tuple[int, str, list[str]]] = {}
        self.kernels: list[Kernel] = []
        self.now = 0.0
        self.sticky = SUCCESS
        self.weights = dict(WEIGHTS)
        self.oversubscription = 1.0        # added slowdown per unit of SM fraction past 1.0
        self._next = 0x1000
        self._next_address = 0x7F00_0000_0000

    # --- bookkeeping ------------------------------------------------------------------------

    def violate(self, rule: str, text: str) -> None:
        self.violations.append(f"{rule}: {text}")

    def handle(self) -> int:
        self._next += 0x10
        return self._next

    def address(self, nbytes: int) -> int:
        address = self._next_address
        self._next_address += (nbytes + 0xFFFF) & ~0xFFFF      # 64 KiB apart, never adjacent
        return address

    def current(self) -> int:
        stack = self.stacks.get(threading.get_ident(), [])
        return stack[-1] if stack else 0

    def needs_context(self, fn: str) -> int:
        if self.sticky:
            return self.sticky
        if self.current() != self.context or self.retains <= 0:
            self.violate("context", f"{fn} without the primary context current on this thread")
            return INVALID_CONTEXT
        return SUCCESS

    def problems(self) -> list[str]:
        """What is left open after the harness closed: leaks and unbalanced context use."""
        left = []
        if self.retains:
            left.append(f"primary context retained {self.retains} more time(s) than released")
        if any(self.stacks.values()):
            left.append("a context is still pushed")
        for what, table in (("stream", self.streams), ("event", self.events)):
            n = sum(o.alive for o in table.values())
            if n:
                left.append(f"{n} {what}(s) not destroyed")
        if self.allocations or self.host:
            left.append(f"{len(self.allocations) + len(self.host)} allocation(s) not freed")
        if any(m["loaded"] for m in self.modules.values()):
            left.append("a module is still loaded")
        return left

    # --- modules ----------------------------------------------------------------------------

    def parse_image(self, image) -> tuple[int, dict[str, list[str]] | None]:
        data = bytes(image)
        if data.startswith(b"\x7fELF"):
            head = data[4:].split(b"\n", 1)
            if not head[0].startswith(b"fake-cubin sm_"):
                return INVALID_IMAGE, None         # a real CUBIN: this fake cannot read it
            arch = int(head[0].split(b"sm_")[1])
            if arch // 10 != self.spec.cc[0] or arch % 10 > self.spec.cc[1]:
                return NO_BINARY_FOR_GPU, None     # SASS runs only within its major version
            text = head[1].decode()
        else:
            if not data.endswith(b"\0"):
                self.violate("module", "PTX image not NUL-terminated")
                return INVALID_PTX, None
            text = data.rstrip(b"\0").decode(errors="replace")
            target = TARGET.search(text)
            if target is None:
                return INVALID_PTX, None
            if int(target.group(1)) > self.spec.cc[0] * 10 + self.spec.cc[1]:
                return NO_BINARY_FOR_GPU, None     # PTX JITs forward only
        entries = {m.group(1): PARAM.findall(m.group(2)) for m in ENTRY.finditer(text)}
        return SUCCESS, entries

    def blocks_per_sm(self, name: str, block: int) -> int:
        by_threads = self.spec.max_threads_per_sm // block
        by_registers = 65536 // (self.spec.registers.get(name, 32) * block)
        return max(0, min(self.spec.max_blocks_per_sm, by_threads, by_registers))

    # --- memory -----------------------------------------------------------------------------

    def find(self, address: int, nbytes: int) -> Allocation | None:
        """The allocation holding [address, address + nbytes) on the device side, if one."""
        for a in self.allocations.values():
            if a.address <= address and address + nbytes <= a.address + a.nbytes:
                return a
        return None

    def view(self, a: Allocation, address: int, n4: int) -> np.ndarray | None:
        if a.backing is None:
            return None
        offset = address - a.address
        return np.frombuffer(a.backing, np.float32, 4 * n4, offset).reshape(-1, 4)

    # --- kernels ----------------------------------------------------------------------------

    def run(self, name: str, args: list, grid: int, block: int, stream: Stream) -> None:
        """Check the probe's arguments against memory, do its data movement on host-backed
        memory, and put it on the timeline."""
        per_sm = max(1, self.blocks_per_sm(name, block))
        capacity = self.spec.sms * per_sm
        hz = self.spec.clock_khz * 1e3
        if name == "compute_probe":
            out, iterations, spin = args
            if self.find(out, 4 * grid) is None:
                return self.fault(f"compute_probe: out {out:#x} holds no {grid} floats")
            kind = "compute"
            per_block_flop = iterations * 256 * block
            share = min(per_sm, math.ceil(min(grid, capacity) / self.spec.sms))
            work_ms = 1e3 * per_block_flop * share / (FLOP_LANES_PER_SM * 2 * hz)
        elif name == "memory_probe":
            src, dst, n4, offset4, per_thread, rounds, spin = args
            if not (0 <= offset4 < n4) or block * per_thread > n4 or rounds < 1:
                return self.fault(f"memory_probe: offset4 {offset4}, span "
                                  f"{block * per_thread} for n4 {n4}")
            a, b = self.find(src, 16 * n4), self.find(dst, 16 * n4)
            if a is None or b is None:
                return self.fault(f"memory_probe: src/dst hold no {n4} float4s")
            s, d = self.view(a, src, n4), self.view(b, dst, n4)
            if s is not None and d is not None:
                idx = (offset4 + np.arange(rounds * grid * block * per_thread)) % n4
                d[idx] = s[idx]
                d[idx, 0] += 1
            kind = "memory"
            nbytes = rounds * grid * block * per_thread * 32
            bandwidth = self.spec.bandwidth_gbs * 1e9 * min(1.0, 2 * grid / capacity)
            work_ms = 1e3 * nbytes / bandwidth
        else:
            return self.fault(f"no model for kernel {name}")
        waves = math.ceil(grid / capacity)
        spin_ms = 1e3 * max(0, spin) / hz
        block_ms = max(work_ms / waves, spin_ms)
        solo = max(work_ms, waves * spin_ms)
        self.place(Kernel(name, stream.handle, stream.priority, kind, grid, grid / capacity,
                          waves, block_ms, 0.0, solo), stream)

    def place(self, k: Kernel, stream: Stream) -> None:
        solo, start = k.end, max(self.now, stream.tail)
        others = [o for o in self.kernels if o.stream != k.stream and o.end > start]
        for o in sorted(others, key=lambda o: o.end):
            if o.sm_fraction >= 1 and o.start <= start:
                if k.priority < o.priority and o.waves > 1:
                    start = max(start, o.start + o.block_ms)     # next retiring block
                else:
                    start = max(start, o.end)                    # no free slot until it ends
        factor = 1.0
        for o in others:
            if o.end <= start:
                continue
            weight = self.weights[(k.kind, o.kind)]
            if k.priority < o.priority:
                weight /= 2                  # its blocks go first as the load's retire
            factor += weight * min(1.0, o.sm_fraction)
            factor += self.oversubscription * max(0.0, min(1.0, o.sm_fraction)
                                                   + k.sm_fraction - 1)
        k.start, k.end = start, start + solo * factor
        stream.tail = k.end
        self.kernels.append(k)

    def fault(self, text: str) -> None:
        """An out-of-bounds or malformed probe launch: the context's sticky error, reported
        by the next call, as a real illegal address would be."""
        self.violate("memory", text)
        self.sticky = ILLEGAL_ADDRESS


def int_of(handle) -> int:
    return 0 if handle is None else int(handle)
