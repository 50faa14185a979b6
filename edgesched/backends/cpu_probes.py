"""Calibration probes and CPU telemetry for the CPU (ONNX Runtime) backend.

On a Jetson, calibration co-runs a slice with probe kernels of known SM footprint and reads
the GPU load and EMC utilization from telemetry. On a CPU the same hooks mean:

- a *compute probe* of footprint `sm` occupies that fraction of the CPU cores with threads
  doing a cache-resident float32 matrix product (numpy's own einsum loop on 128x128 matrices:
  192 KiB, inside L2 everywhere we run, including a Cortex-A78's 256 KiB L2);
- a *memory probe* of footprint `mem` occupies that fraction of the cores with threads that
  stream copies over arrays far larger than the last-level cache (64..256 MiB each), so every
  byte goes to DRAM;
- the CPU busy fraction over all cores comes from /proc/stat (telemetry/procstat.py).

Footprints are core shares, not thread counts: share * cores = k cores is served by ceil(k)
threads, all running flat out except the last, which runs a duty cycle of the fractional
part (measured in its own CPU time), so f = 0.75 on 2 cores really offers 1.5 cores of load.
At least one thread runs whenever the share is above zero.

Why not `np.dot`: it calls OpenBLAS, which above a small size spreads one product over its
own thread pool (and serializes concurrent callers), so the number of busy cores would no
longer be the number of probe threads. `np.einsum(..., optimize=False)` never calls BLAS and
releases the GIL inside its loops, like `np.copyto` does, so N probe threads keep N cores
busy and hold the GIL for only microseconds per op (ops are ~0.1..1 ms).

Every probe counts the floating-point operations it did and the bytes it moved (read +
written, write-allocate traffic not counted), so `calibrate` can report achieved GFLOP/s
and GB/s. Probes own all their data; they never see request tensors.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.telemetry.procstat import cpu_count

MATRIX_N = 128                        # compute probe: N x N float32 matrices (3 of them)
FLOPS_PER_OP = 2 * MATRIX_N ** 3      # one N x N x N multiply-add product
CHUNK_BYTES = 4 << 20                 # memory probe: bytes copied per op (one GIL release)
MIN_STREAM_BYTES = 64 << 20           # each streamed array is at least this big...
MAX_STREAM_BYTES = 256 << 20          # ...and at most this big
FALLBACK_LLC_BYTES = 8 << 20          # when the cache size cannot be read
READY_TIMEOUT_S = 30.0                # allocation and first op of every probe thread
RESET_WINDOW_S = 0.1                  # duty-cycle bookkeeping restarts this often
THREAD_PREFIX = "edgesched-probe"


def thread_duties(share: float, cores: int) -> list[float]:
    """Per-thread duty cycles that make up `share` (0..1) of `cores` cores: ceil(share*cores)
    threads, all at 1.0 but the last, which runs the fractional remainder."""
    if not 0.0 <= share <= 1.0 or math.isnan(share):
        raise ValueError(f"a probe footprint is a fraction 0..1 of the cores, got {share!r}")
    load = share * cores
    if load <= 1e-9:
        return []
    threads = max(1, math.ceil(load - 1e-9))
    last = load - (threads - 1)
    return [1.0] * (threads - 1) + [min(1.0, max(last, 0.01))]


# --- machine figures ---------------------------------------------------------------------

def last_level_cache_bytes(root: str | os.PathLike = "/") -> int:
    """Size of one instance of the largest CPU cache (sysfs, else sysconf, else 8 MiB)."""
    best_level, best_size = 0, 0
    base = Path(root) / "sys/devices/system/cpu/cpu0/cache"
    try:
        for index in base.glob("index*"):
            try:
                level = int((index / "level").read_text().strip())
                kind = (index / "type").read_text().strip()
                size = _parse_size((index / "size").read_text().strip())
            except (OSError, ValueError):
                continue
            if kind != "Instruction" and (level, size) > (best_level, best_size):
                best_level, best_size = level, size
    except OSError:
        pass
    if best_size > 0:
        return best_size
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if size and size > 0:
            return int(size)
    return FALLBACK_LLC_BYTES


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def stream_array_bytes(threads: int) -> int:
    """Size of each array a memory probe streams over: 2x the last-level cache, clamped to
    64..256 MiB, and shrunk so that all of a probe's arrays (one shared source plus one
    destination per thread) take at most 1/8 of physical memory."""
    size = min(max(2 * last_level_cache_bytes(), MIN_STREAM_BYTES), MAX_STREAM_BYTES)
    phys = physical_memory_bytes()
    if phys:
        size = min(size, phys // 8 // (max(threads, 1) + 1))
    return max(CHUNK_BYTES, size // CHUNK_BYTES * CHUNK_BYTES)


# --- probes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeStats:
    """What a probe did: ops, floating-point operations and bytes moved (read + written)."""

    seconds: float
    ops: int
    flops: int
    bytes_moved: int

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def gbs(self) -> float:
        return self.bytes_moved / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __sub__(self, earlier: "ProbeStats") -> "ProbeStats":
        return ProbeStats(self.seconds - earlier.seconds, self.ops - earlier.ops,
                          self.flops - earlier.flops, self.bytes_moved - earlier.bytes_moved)


class _Counter:
    """One worker's tallies; only that worker writes them."""

    __slots__ = ("ops", "flops", "bytes")

    def __init__(self) -> None:
        self.ops = self.flops = self.bytes = 0


class ProbeError(RuntimeError):
    """A probe thread could not start (e.g. no memory for its arrays)."""


class CpuProbe:
    """One launched probe: compute threads for `sm` of the cores, streaming threads for `mem`
    of them, until `stop()` or until `seconds` have passed (a safety cap: the threads then
    end by themselves). `start()` returns once every thread has done its first op, so a
    measurement started after it overlaps a probe that is really running."""

    def __init__(self, sm: float, mem: float, seconds: float, *, cores: int | None = None,
                 stream_bytes: int | None = None, name: str = THREAD_PREFIX):
        if not seconds > 0:
            raise ValueError(f"a probe's safety cap must be > 0 seconds, got {seconds!r}")
        self.cores = cores or cpu_count()
        self.sm, self.mem, self.seconds = sm, mem, seconds
        self._compute = thread_duties(sm, self.cores)
        self._memory = thread_duties(mem, self.cores)
        self._stream_bytes = stream_bytes
        self._stop = threading.Event()
        self._counters: list[_Counter] = []
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []
        self._errors: list[str] = []
        self._name = name
        self._started_s: float | None = None
        self._stopped_s: float | None = None
        self._deadline = 0.0

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> "CpuProbe":
        if self._started_s is not None:
            raise RuntimeError("a probe starts once")
        self._started_s = time.monotonic()
        self._deadline = self._started_s + self.seconds
        source = None
        if self._memory:
            size = self._stream_bytes or stream_array_bytes(len(self._memory))
            size = max(CHUNK_BYTES, size // CHUNK_BYTES * CHUNK_BYTES)
            try:
                source = np.ones(size // 4, np.float32)     # shared, read-only, touched
            except MemoryError:
                raise ProbeError(f"no memory for a {size >> 20} MiB probe array") from None
        jobs: list[tuple[str, Callable, tuple]] = []
        jobs += [(f"c{i}", self._compute_loop, (d,)) for i, d in enumerate(self._compute)]
        jobs += [(f"m{i}", self._memory_loop, (d, source, i)) for i, d in enumerate(self._memory)]
        for tag, loop, args in jobs:
            counter, ready = _Counter(), threading.Event()
            thread = threading.Thread(target=self._guarded, args=(loop, counter, ready, *args),
                                      name=f"{self._name}-{tag}", daemon=True)
            self._counters.append(counter)
            self._ready.append(ready)
            self._threads.append(thread)
        for t in self._threads:
            t.start()
        give_up = time.monotonic() + READY_TIMEOUT_S
        for ready in self._ready:
            ready.wait(max(0.0, give_up - time.monotonic()))
        if self._errors:
            self.stop()
            raise ProbeError(f"probe thread failed: {self._errors[0]}")
        return self

    def stop(self, timeout_s: float = 10.0) -> ProbeStats:
        """Stop every thread and wait for it (idempotent); the probe's totals."""
        self._stop.set()
        give_up = time.monotonic() + timeout_s
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, give_up - time.monotonic()))
        if self._stopped_s is None and not self.running:
            self._stopped_s = min(time.monotonic(), self._deadline) if self._started_s else 0.0
        return self.stats()

    def stats(self) -> ProbeStats:
        """Totals so far (safe to call while the probe runs)."""
        if self._started_s is None:
            return ProbeStats(0.0, 0, 0, 0)
        end = self._stopped_s if self._stopped_s is not None else \
            min(time.monotonic(), self._deadline)
        counters = list(self._counters)
        return ProbeStats(max(end - self._started_s, 0.0), sum(c.ops for c in counters),
                          sum(c.flops for c in counters), sum(c.bytes for c in counters))

    # --- the thread bodies ---------------------------------------------------------------
    def _guarded(self, loop: Callable, counter: _Counter, ready: threading.Event,
                 *args) -> None:
        try:
            loop(counter, ready, *args)
        except Exception as e:        # reported by start(); a probe thread never raises
            self._errors.append(f"{type(e).__name__}: {e}")
        finally:
            ready.set()

    def _finished(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline

    def _run(self, op: Callable[[], None], counter: _Counter, ready: threading.Event,
             duty: float, flops: int, nbytes: int) -> None:
        """Repeat op until stopped, keeping this thread's CPU time at `duty` of wall time."""
        op()
        counter.ops, counter.flops, counter.bytes = 1, flops, nbytes
        ready.set()
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        while not self._finished():
            op()
            counter.ops += 1
            counter.flops += flops
            counter.bytes += nbytes
            if duty < 1.0:
                wall = time.perf_counter() - wall0
                ahead = (time.thread_time() - cpu0) / duty - wall
                if ahead > 0:
                    self._stop.wait(min(ahead, max(self._deadline - time.monotonic(), 0.0)))
                if wall > RESET_WINDOW_S:
                    wall0, cpu0 = time.perf_counter(), time.thread_time()

    def _compute_loop(self, counter: _Counter, ready: threading.Event, duty: float) -> None:
        """Cache-resident float32 N x N products (numpy's einsum loop: no BLAS threads)."""
        rng = np.random.default_rng(0)
        a = rng.standard_normal((MATRIX_N, MATRIX_N), dtype=np.float32) / MATRIX_N
        b = rng.standard_normal((MATRIX_N, MATRIX_N), dtype=np.float32) / MATRIX_N
        c = np.empty_like(a)

        def op() -> None:
            np.einsum("ij,jk->ik", a, b, out=c, optimize=False)
        self._run(op, counter, ready, duty, FLOPS_PER_OP, 0)

    def _memory_loop(self, counter: _Counter, ready: threading.Event, duty: float,
                     source: np.ndarray, index: int) -> None:
        """Chunked copies from the shared source into this thread's own destination, both
        far larger than the last-level cache: every pass streams through DRAM."""
        dest = np.empty_like(source)
        dest.fill(0.0)                        # touch every page before reporting ready
        step = CHUNK_BYTES // 4
        pieces = [(dest[i:i + step], source[i:i + step]) for i in range(0, source.size, step)]
        at = [(index * 7) % len(pieces)]      # threads start at different places

        def op() -> None:
            k = at[0]
            np.copyto(*pieces[k])
            at[0] = k + 1 if k + 1 < len(pieces) else 0
        self._run(op, counter, ready, duty, 0, 2 * CHUNK_BYTES)


# --- self-calibration --------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeCalibration:
    """Achieved throughput of the probes alone at full footprint on this machine."""

    cores: int
    compute_gflops: float        # compute probe, sm = 1.0 (all cores)
    stream_gbs: float            # memory probe, mem = 1.0 (all cores): bytes read + written
    stream_array_bytes: int

    def __str__(self) -> str:
        return (f"{self.cores} cores: compute probe {self.compute_gflops:.1f} GFLOP/s, "
                f"memory probe {self.stream_gbs:.1f} GB/s "
                f"({self.stream_array_bytes >> 20} MiB arrays)")


def measure(sm: float, mem: float, seconds: float, **kwargs) -> ProbeStats:
    """Run one probe alone for `seconds` after it is up; its throughput over that time."""
    probe = CpuProbe(sm, mem, seconds + READY_TIMEOUT_S, **kwargs).start()
    try:
        before = probe.stats()
        time.sleep(seconds)
        return probe.stats() - before
    finally:
        probe.stop()


def measure_stream_gbs(seconds: float = 0.15, cores: int | None = None) -> float:
    return measure(0.0, 1.0, seconds, cores=cores).gbs


def calibrate(seconds: float = 0.25, cores: int | None = None) -> ProbeCalibration:
    """Quick self-calibration: the compute probe, then the memory probe, each on all cores."""
    cores = cores or cpu_count()
    compute = measure(1.0, 0.0, seconds, cores=cores)
    stream = measure(0.0, 1.0, seconds, cores=cores)
    return ProbeCalibration(cores, compute.gflops, stream.gbs, stream_array_bytes(cores))
