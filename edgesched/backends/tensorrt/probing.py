"""Calibration on the TensorRT backend: probe kernels beside the slices, and telemetry windows.

Probes are the NVRTC-compiled kernels of probes/ (compute: FMA chains; memory: streaming far
past L2), launched through cuda-python (the harness's `Cuda` wrapper, never `open`ed: it works
in the backend's retained primary context, which the caller has pushed) on streams of their own
at the LEAST priority, so a probe competes with the measured slice as a best-effort co-runner
would. A probe's grid is its SM footprint: blocks = footprint x SMs x blocks per SM (the
occupancy calculator's answer for the kernel at BLOCK_THREADS). It runs as back-to-back chunks
of CHUNK_S each (clock64() spinning in every block), DEPTH chunks queued at all times by one
thread per probe, until stopped or until its safety cap passes; stopping waits for the queued
chunks (at most DEPTH x CHUNK_S).

Telemetry: the calibration's reader (telemetry/: jtop, sysfs, tegrastats) sampled in the
background; `window()` is the mean GPU load and EMC utilization since the previous call.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from edgesched.backends.tensorrt.harness.driver import DONE_EVENT, Cuda, import_driver
from edgesched.backends.tensorrt.probes import BLOCK_THREADS, COMPUTE, FLOAT4_BYTES, MEMORY
from edgesched.backends.tensorrt.probes.nvrtc import Nvrtc, import_nvrtc

log = logging.getLogger("edgesched.tensorrt.probing")
CHUNK_S = 0.02               # one probe launch: 20 ms of spinning at the SM clock
DEPTH = 3                    # chunks queued per probe: 60 ms of slack for the topping thread
PER_THREAD = 8               # memory probe: float4s per thread per round (32 KiB per block)
MIN_STREAM_BYTES = 64 << 20  # each memory-probe array at least 64 MiB and 8x L2: DRAM traffic
L2_MULTIPLE = 8
SAMPLE_INTERVAL_S = 0.1      # telemetry sampling period (jtop's own is 0.1 s at best)
MIN_WINDOW_S = 0.5           # a solo window: at least this long, and >= 2 sampling periods


def _modules():
    """(cuda-python driver, NVRTC binding); tests replace this function."""
    return import_driver(), import_nvrtc()


class _Kernel:
    def __init__(self, cuda: Cuda, module, spec):
        self.spec = spec
        self.function = cuda.function(module, spec.entry)
        self.per_sm = max(1, cuda.blocks_per_sm(self.function, BLOCK_THREADS))


class ProbeRunner:
    """The probe kernels loaded in the primary context. Every method runs with it current."""

    def __init__(self, ordinal: int = 0):
        driver, nvrtc = _modules()
        self.cuda = Cuda(driver, ordinal)
        cuda = self.cuda
        cuda.call("cuInit", 0)                 # a no-op after TensorRT's; the binding needs it
        cuda.device = cuda.call("cuDeviceGet", ordinal)
        self.sms = cuda.attribute("MULTIPROCESSOR_COUNT")
        cc = (cuda.attribute("COMPUTE_CAPABILITY_MAJOR"),
              cuda.attribute("COMPUTE_CAPABILITY_MINOR"))
        # the maximum SM clock: under DVFS a chunk runs longer than CHUNK_S, never shorter
        self.clock_hz = 1e3 * (cuda.attribute("CLOCK_RATE", 0) or 1_000_000)
        self.l2_bytes = cuda.attribute("L2_CACHE_SIZE", 0)
        compiler = Nvrtc(nvrtc)
        arch = compiler.target(cc)
        self.kernels = {}
        for spec in (COMPUTE, MEMORY):
            image = compiler.compile(spec.source(), spec.file, arch).image
            self.kernels[spec.kind] = _Kernel(cuda, cuda.load(image), spec)
        least, _greatest = cuda.priority_range()
        self.streams = {kind: cuda.stream(least) for kind in self.kernels}
        self.out = cuda.alloc(4 * self.kernels["compute"].per_sm * self.sms)
        self.n4 = 0
        self.src = self.dst = None
        self.offset4 = 0
        self.arch = arch

    def grid(self, kind: str, footprint: float) -> int:
        k = self.kernels[kind]
        return max(1, round(min(footprint, 1.0) * self.sms * k.per_sm))

    def _stream_buffers(self) -> None:
        if self.src is None:
            nbytes = max(MIN_STREAM_BYTES, L2_MULTIPLE * self.l2_bytes)
            self.n4 = max(nbytes // FLOAT4_BYTES, BLOCK_THREADS * PER_THREAD)
            self.src = self.cuda.alloc(self.n4 * FLOAT4_BYTES)
            self.dst = self.cuda.alloc(self.n4 * FLOAT4_BYTES)

    def launch_chunk(self, kind: str, grid: int) -> None:
        spin = int(CHUNK_S * self.clock_hz)
        k = self.kernels[kind]
        if kind == "compute":
            params = COMPUTE.pack(out=int(self.out), iterations=1, spin_cycles=spin)
        else:
            params = MEMORY.pack(src=int(self.src), dst=int(self.dst), n4=self.n4,
                                 offset4=self.offset4, per_thread=PER_THREAD, rounds=1,
                                 spin_cycles=spin)
            # the next chunk starts past this one's first round: no L2 reuse between chunks
            self.offset4 = (self.offset4 + grid * BLOCK_THREADS * PER_THREAD) % self.n4
        self.cuda.launch(k.function, grid, BLOCK_THREADS, self.streams[kind], params)

    def close(self) -> list[str]:
        return self.cuda.close()


class _Probe:
    """One running probe: a thread keeping DEPTH chunks queued on each kernel's stream."""

    def __init__(self, runner: ProbeRunner, primary, grids: dict[str, int], seconds: float):
        self.runner, self.primary, self.grids = runner, primary, grids
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.error: str | None = None
        with primary.current():
            self.events = {kind: [runner.cuda.event(DONE_EVENT) for _ in range(DEPTH)]
                           for kind in grids}
        self.queued: dict[str, collections.deque] = {k: collections.deque() for k in grids}
        self.chunks = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="edgesched-probe")

    def _top_up(self) -> None:
        cuda = self.runner.cuda
        for kind, grid in self.grids.items():
            queued, free = self.queued[kind], self.events[kind]
            while queued and cuda.done(queued[0]):     # cuEventQuery: never blocks
                free.append(queued.popleft())
            while free:
                self.runner.launch_chunk(kind, grid)
                event = free.pop()
                cuda.record(event, self.runner.streams[kind])
                queued.append(event)
                self.chunks += 1

    def _run(self) -> None:
        self.primary.push()
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                self._top_up()
                self.stop.wait(CHUNK_S / 2)            # DEPTH - 1 chunks still queued
        except Exception as e:       # reported by stop_probe: calibration must not hang
            self.error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        finally:
            try:
                for queued in self.queued.values():    # the queued chunks end by themselves
                    if queued:
                        self.runner.cuda.wait(queued[-1])
            except Exception as e:
                self.error = self.error or f"{type(e).__name__}: {e}"
            self.primary.pop()

    def finish(self) -> str | None:
        self.stop.set()
        self.thread.join()
        return self.error


class Calibration:
    """What the TensorRT backend holds for calibration: probes, their runner, telemetry."""

    def __init__(self):
        self.runner: ProbeRunner | None = None
        self.probes: dict[int, _Probe] = {}
        self._keys = iter(range(1, 2**62))
        self.sampler = None
        self.reader = None
        self._since_s = time.monotonic()

    # --- probes ------------------------------------------------------------------------------
    def launch(self, primary, ordinal: int, sm: float, mem: float, seconds: float) -> int:
        if self.runner is None:
            with primary.current():
                self.runner = ProbeRunner(ordinal)
                log.info("probe kernels compiled for %s (%d SMs)", self.runner.arch,
                         self.runner.sms)
        grids = {}
        if sm > 0:
            grids["compute"] = self.runner.grid("compute", sm)
        if mem > 0:
            with primary.current():
                self.runner._stream_buffers()
            grids["memory"] = self.runner.grid("memory", mem)
        probe = _Probe(self.runner, primary, grids, seconds)
        key = next(self._keys)
        self.probes[key] = probe
        probe.thread.start()
        return key

    def stop(self, primary, key: int) -> str | None:
        """Stop one probe and wait for its chunks; its thread's error, if any. Unknown: None."""
        probe = self.probes.pop(key, None)
        if probe is None:
            return None
        error = probe.finish()
        with primary.current():
            for events in probe.events.values():
                for event in events:
                    self.runner.cuda.destroy_event(event)
        return error

    # --- telemetry ---------------------------------------------------------------------------
    def attach(self, reader) -> None:
        from edgesched.telemetry.sampler import Sampler
        self.reader = reader
        self.sampler = Sampler(reader, SAMPLE_INTERVAL_S).start()
        self._since_s = time.monotonic()

    @property
    def min_window_s(self) -> float:
        return max(MIN_WINDOW_S, 2 * SAMPLE_INTERVAL_S) if self.sampler else 0.0

    def window(self) -> tuple[float, float]:
        """(GPU busy fraction, EMC utilization fraction) averaged since the last call; 0.0
        for what the reader does not report (or with no reader)."""
        now = time.monotonic()
        since, self._since_s = self._since_s, now
        if self.sampler is None:
            return 0.0, 0.0
        mean = self.sampler.window(since, now)
        return ((mean.gpu_load_pct or 0.0) / 100.0, (mean.emc_util_pct or 0.0) / 100.0)

    def close(self, primary) -> None:
        for key in list(self.probes):
            self.stop(primary, key)
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.runner is not None:
            with primary.current():
                failed = self.runner.close()
            self.runner = None
            for problem in failed:
                log.warning("closing the probe kernels: %s", problem)
