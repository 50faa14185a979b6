"""Background sampling of one Reader into a bounded ring buffer, and window averages over it.

Calibration brackets a run with time.monotonic() and asks `window(start, end)` for the mean
GPU load / EMC utilization the reader saw meanwhile. The sampler never closes its reader:
whoever opened it does.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from types import TracebackType

from edgesched.telemetry.sample import NUMERIC_FIELDS, Reader, TelemetrySample

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, reader: Reader, interval_s: float = 0.1, capacity: int = 600):
        if interval_s <= 0 or capacity < 1:
            raise ValueError("Sampler needs interval_s > 0 and capacity >= 1")
        self.reader = reader
        self.interval_s = interval_s
        self._samples: collections.deque[TelemetrySample] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0            # successful read() calls
        self.errors = 0           # failed read() calls (logged once, then only counted)
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Sampler:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"telemetry-{self.reader.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and join the thread (a read() in progress is waited for)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            try:
                sample = self.reader.read()
            except Exception as e:   # a flaky source must not end sampling
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.errors == 1:
                    log.warning("telemetry %s: read failed (%s); further failures are only "
                                "counted", self.reader.name, self.last_error)
            else:
                with self._lock:
                    self._samples.append(sample)
                self.reads += 1
            # Fixed cadence without drift; after a stall, restart from now rather than burst.
            next_s = max(next_s + self.interval_s, time.monotonic())
            self._stop.wait(next_s - time.monotonic())

    # --- queries ---------------------------------------------------------------------------

    def samples(self, since_s: float = float("-inf"),
                until_s: float | None = None) -> list[TelemetrySample]:
        """Buffered samples with since_s <= time_s <= until_s (None: no upper bound), oldest
        first."""
        until = float("inf") if until_s is None else until_s
        with self._lock:
            return [s for s in self._samples if since_s <= s.time_s <= until]

    def latest(self) -> TelemetrySample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def window(self, since_s: float, until_s: float | None = None) -> TelemetrySample:
        """The mean of every numeric field over the samples in [since_s, until_s]: a field is
        None when no sample in the window has it; temps_c is averaged per sensor; nvpmodel and
        jetson_clocks are the newest known values. time_s is the newest sample's time (or the
        window's end when the window is empty)."""
        chosen = self.samples(since_s, until_s)
        if not chosen:
            return TelemetrySample(time_s=since_s if until_s is None else until_s)
        means: dict[str, float | None] = {}
        for name in NUMERIC_FIELDS:
            values = [v for v in (getattr(s, name) for s in chosen) if v is not None]
            means[name] = sum(values) / len(values) if values else None
        sensors: dict[str, list[float]] = {}
        for s in chosen:
            for sensor, c in s.temps_c.items():
                sensors.setdefault(sensor, []).append(c)
        newest = chosen[::-1]
        return TelemetrySample(
            time_s=chosen[-1].time_s,
            temps_c={k: sum(v) / len(v) for k, v in sensors.items()},
            nvpmodel=next((s.nvpmodel for s in newest if s.nvpmodel is not None), None),
            jetson_clocks=next((s.jetson_clocks for s in newest if s.jetson_clocks is not None),
                               None),
            **means,
        )
