"""Launching and timing the probe kernels on one `Cuda` session.

Every time here is device time between two timing events (CU_EVENT_BLOCKING_SYNC, timing on)
recorded around the launches on their stream; host waits sleep on those events. A co-run
starts a load of known footprint on one stream and, right after, the timed probe on another;
the load lasts `cover` times the probe's solo time (held by clock64() spinning in every block),
and the run counts as `covered` when the probe started and ended inside the load's run.
"""
from __future__ import annotations

import ctypes
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgesched.backends.tensorrt.harness.driver import DONE_EVENT, Cuda, DeviceInfo
from edgesched.backends.tensorrt.harness.result import Check
from edgesched.backends.tensorrt.probes import (
    BLOCK_THREADS,
    BYTES_PER_ELEMENT,
    COMPUTE,
    FLOAT4_BYTES,
    FLOP_PER_ROUND,
    MEMORY,
    ProbeKernel,
)

PER_THREAD = 8                 # memory probe: float4s per thread per round (32 KiB per block)
MIN_STREAM_BYTES = 64 << 20    # each memory-probe array at least 64 MiB ...
L2_MULTIPLE = 8                # ... and 8x L2, so a launch's traffic goes to DRAM
MAX_WORK = 1 << 30             # iterations / rounds: far below int32's limit
MAX_WAVES = 256                # priority load: bounds the compute probe's `out` buffer
SPIN_CHECK_MS = 30.0           # nominal length of the blocking-sync check's kernel
SPINNING_CPU_SHARE = 0.5       # CPU time / wall time above this during a wait: it spun
COVER_SLACK_MS = 0.01          # events on two streams may be stamped ~us out of issue order


@dataclass(frozen=True)
class Settings:
    target_ms: float = 2.0                 # a probe's solo time at one full wave
    runs: int = 5                          # timed runs per measurement (the median is kept)
    solo_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0, 2.0)
    corun_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    cover: float = 6.0                     # a load runs this many of the victim's solo times
    priority_fraction: float = 0.25        # victim size in the priority check
    priority_block_ms: float = 0.2         # per-block time of its load: how long a
    #                                        high-priority block may wait for a free slot
    keep_tolerance: float = 1.25           # high-priority slowdown still called "kept"
    stream_bytes: int | None = None        # each memory array; None: MIN_STREAM_BYTES / L2 rule
    prefer_cubin: bool = True              # False: load PTX (driver JIT) even where CUBIN works


@dataclass
class Loaded:
    kernel: ProbeKernel
    function: object
    registers: int
    blocks_per_sm: int
    capacity: int                          # resident blocks at once: SMs x blocks_per_sm
    work: int = 1                          # iterations / rounds giving target_ms at one wave

    def grid(self, fraction: float) -> int:
        return max(1, round(fraction * self.capacity))


class Bench:
    def __init__(self, cuda: Cuda, info: DeviceInfo, probes: dict[str, Loaded],
                 settings: Settings):
        self.cuda, self.info, self.probes, self.s = cuda, info, probes, settings
        nbytes = settings.stream_bytes or max(MIN_STREAM_BYTES, L2_MULTIPLE * info.l2_bytes)
        self.n4 = max(nbytes // FLOAT4_BYTES, BLOCK_THREADS * PER_THREAD)
        self.src = cuda.alloc(self.n4 * FLOAT4_BYTES)
        self.dst = cuda.alloc(self.n4 * FLOAT4_BYTES)
        self.out_blocks = probes["compute"].capacity * MAX_WAVES
        self.out = cuda.alloc(4 * self.out_blocks)
        self.offset4 = 0
        self.events = [cuda.event() for _ in range(4)]
        self.done_event = cuda.event(DONE_EVENT)
        self.cycles_per_ms = float(info.clock_khz or 1_000_000)   # kHz = cycles per ms
        self._solo: dict[tuple[str, int], float] = {}

    # --- launching --------------------------------------------------------------------------

    def enqueue(self, kind: str, grid: int, stream, work: int, spin_cycles: int = 0) -> None:
        probe = self.probes[kind]
        if kind == "compute":
            if grid > self.out_blocks:
                raise ValueError(f"compute probe grid {grid} > its out buffer ({self.out_blocks})")
            params = COMPUTE.pack(out=int(self.out), iterations=work, spin_cycles=spin_cycles)
        else:
            params = MEMORY.pack(src=int(self.src), dst=int(self.dst), n4=self.n4,
                                 offset4=self.offset4, per_thread=PER_THREAD, rounds=work,
                                 spin_cycles=spin_cycles)
            # the next launch starts where this one's fixed work ends: fresh lines, not L2 hits
            self.offset4 = (self.offset4 + grid * BLOCK_THREADS * PER_THREAD * work) % self.n4
        self.cuda.launch(probe.function, grid, BLOCK_THREADS, stream, params)

    def timed(self, kind: str, grid: int, stream, work: int, spin_cycles: int = 0) -> float:
        start, end = self.events[:2]
        self.cuda.record(start, stream)
        self.enqueue(kind, grid, stream, work, spin_cycles)
        self.cuda.record(end, stream)
        self.cuda.wait(end)
        return self.cuda.elapsed_ms(start, end)

    def spin_cycles(self, ms: float) -> int:
        return max(1, int(ms * self.cycles_per_ms))

    # --- checks -----------------------------------------------------------------------------

    def calibrate_clock(self, stream) -> Check:
        """Time a one-block clock64() spin: the SM clock the device runs at now, in MHz."""
        cycles = self.spin_cycles(5.0)
        ms = self.timed("compute", 1, stream, 1, cycles)
        if ms <= 0:
            return Check("timing events", False, f"a {cycles}-cycle spin timed {ms} ms")
        self.cycles_per_ms = cycles / ms
        return Check("timing events", True, f"a {cycles:,}-cycle clock64() spin took "
                     f"{ms:.3f} ms: SM clock {self.cycles_per_ms / 1e3:.0f} MHz now "
                     f"(attribute max {self.info.clock_khz / 1e3:.0f} MHz)")

    def blocking_sync(self, stream) -> Check:
        """A DONE_EVENT after a long kernel: not ready at once, and the wait sleeps."""
        self.enqueue("compute", 1, stream, 1, self.spin_cycles(SPIN_CHECK_MS))
        self.cuda.record(self.done_event, stream)
        ready_at_once = self.cuda.done(self.done_event)
        wall, cpu = time.perf_counter(), time.process_time()
        self.cuda.wait(self.done_event)
        wall, cpu = 1e3 * (time.perf_counter() - wall), 1e3 * (time.process_time() - cpu)
        ready_after = self.cuda.done(self.done_event)
        spun = wall >= 5.0 and cpu > SPINNING_CPU_SHARE * wall
        ok = not ready_at_once and ready_after and not spun
        first = ("ready at once (the launch was not asynchronous)" if ready_at_once
                 else "NOT_READY right after the record")
        detail = f"{first}, then waited {wall:.1f} ms using {cpu:.1f} ms of CPU"
        if not ready_after:
            detail += "; still not ready after the wait"
        return Check("blocking-sync event", ok,
                     detail + ("; the wait spun" if spun else " (BLOCKING_SYNC | DISABLE_TIMING)"))

    def zero_copy(self, stream) -> Check:
        """The memory probe reads and writes mapped pinned host memory; the host checks it."""
        if not self.info.can_map_host_memory:
            return Check("zero-copy", False, "the device cannot map host memory")
        grid = self.info.sms
        n4 = grid * BLOCK_THREADS * PER_THREAD       # one round of one wave touches each once
        nbytes = n4 * FLOAT4_BYTES
        host_src, dev_src = self.cuda.host_mapped(nbytes)
        host_dst, dev_dst = self.cuda.host_mapped(nbytes)
        src = np.frombuffer((ctypes.c_float * (4 * n4)).from_address(host_src), np.float32)
        dst = np.frombuffer((ctypes.c_float * (4 * n4)).from_address(host_dst), np.float32)
        src[:] = np.arange(4 * n4, dtype=np.float32) % 1024     # exact in float32
        dst[:] = 0
        start, end = self.events[:2]
        self.cuda.record(start, stream)
        self.cuda.launch(self.probes["memory"].function, grid, BLOCK_THREADS, stream,
                         MEMORY.pack(src=int(dev_src), dst=int(dev_dst), n4=n4, offset4=0,
                                     per_thread=PER_THREAD, rounds=1, spin_cycles=0))
        self.cuda.record(end, stream)
        self.cuda.record(self.done_event, stream)
        self.cuda.wait(self.done_event)
        ms = self.cuda.elapsed_ms(start, end)
        expected = src.reshape(-1, 4).copy()
        expected[:, 0] += 1
        bad = int(np.count_nonzero(np.any(dst.reshape(-1, 4) != expected, axis=1)))
        where = "==" if int(dev_src) == host_src else "!="
        detail = (f"memory probe read and wrote {nbytes >> 10} KiB of mapped pinned host memory "
                  f"in {ms:.3f} ms; device pointer {where} host pointer")
        if bad:
            return Check("zero-copy", False, f"{detail}; {bad} of {n4} float4s wrong")
        return Check("zero-copy", True, detail + "; every element checked")

    # --- measurements -----------------------------------------------------------------------

    def tune(self, kind: str, stream) -> int:
        """Work per block giving target_ms at one full wave (the probe's time is linear in it)."""
        probe, work = self.probes[kind], 1
        grid = probe.grid(1.0)
        ms = self.timed(kind, grid, stream, work)
        while ms < self.s.target_ms / 10 and work < MAX_WORK // 8:
            work *= 8
            ms = self.timed(kind, grid, stream, work)
        probe.work = int(min(MAX_WORK, max(1, round(work * self.s.target_ms / max(ms, 1e-6)))))
        return probe.work

    def solo(self, kind: str, grid: int, stream) -> list[float]:
        work = self.probes[kind].work
        self.timed(kind, grid, stream, work)                  # warm-up: clocks, caches, TLB
        times = [self.timed(kind, grid, stream, work) for _ in range(self.s.runs)]
        self._solo[(kind, grid)] = statistics.median(times)
        return times

    def solo_ms(self, kind: str, grid: int, stream) -> float:
        if (kind, grid) not in self._solo:
            self.solo(kind, grid, stream)
        return self._solo[(kind, grid)]

    def rate(self, kind: str, grid: int, ms: float) -> tuple[float, str]:
        threads = grid * BLOCK_THREADS * self.probes[kind].work
        if kind == "compute":
            return threads * FLOP_PER_ROUND / (ms * 1e-3) / 1e9, "GFLOP/s"
        return threads * PER_THREAD * BYTES_PER_ELEMENT / (ms * 1e-3) / 1e9, "GB/s"

    def corun(self, victim: str, victim_grid: int, victim_stream, load: str, load_grid: int,
              load_stream, load_spin_cycles: int) -> tuple[list[float], bool]:
        """`runs` times: start the load, then the victim; the victim's times and whether every
        run was covered by its load."""
        l0, l1, v0, v1 = self.events
        times, covered = [], True
        for _ in range(self.s.runs):
            self.cuda.record(l0, load_stream)
            self.enqueue(load, load_grid, load_stream, 1, load_spin_cycles)
            self.cuda.record(l1, load_stream)
            self.cuda.record(v0, victim_stream)
            self.enqueue(victim, victim_grid, victim_stream, self.probes[victim].work)
            self.cuda.record(v1, victim_stream)
            self.cuda.wait(v1)
            self.cuda.wait(l1)
            times.append(self.cuda.elapsed_ms(v0, v1))
            covered &= (self.cuda.elapsed_ms(l0, v0) >= -COVER_SLACK_MS
                        and self.cuda.elapsed_ms(v1, l1) >= -COVER_SLACK_MS)
        return times, covered

    def priority_load(self, solo_ms: float) -> tuple[int, int]:
        """(grid, per-block spin cycles): a compute load of many short waves lasting about
        `cover` x solo_ms, so blocks retire often and the block scheduler gets to choose."""
        waves = math.ceil(self.s.cover * solo_ms / self.s.priority_block_ms)
        waves = min(MAX_WAVES, max(2, waves))
        return waves * self.probes["compute"].capacity, self.spin_cycles(self.s.priority_block_ms)
