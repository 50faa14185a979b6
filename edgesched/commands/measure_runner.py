"""The launches a measurement makes through the Backend interface (solo runs, co-runs, probe
runs), shared by measure.py (the profile) and measure_batch.py (latency per batch size)."""
from __future__ import annotations

import statistics
import time

from edgesched.errors import EdgeschedError
from edgesched.types import Launch

PROBE_S = 10.0        # probes outlive any measured slice; stopped explicitly


class CalibrationError(EdgeschedError):
    code = "CALIBRATION_ERROR"


class Runner:
    def __init__(self, backend):
        self.b = backend
        self._ids = iter(range(10**9, 2 * 10**9))   # far from the engine's request ids
        # The last two streams: normal priority where there are 3+ (stream 0 is the
        # high-priority one), so stream priority does not colour the figures.
        n = backend.num_streams
        if n < 2:
            raise CalibrationError("calibration co-runs slices on 2 streams: set "
                                   "device.streams to 2 or more")
        self.streams = (n - 2, n - 1)

    def _done(self, c) -> float:
        if c.error is not None:
            raise CalibrationError(f"model {c.launch.model!r} slice {c.launch.slice_index} "
                                   f"failed during calibration: {c.error}")
        device_s = getattr(c, "device_s", None)
        return device_s if device_s is not None else c.finished_s - c.started_s

    def run(self, model: str, index: int) -> float:
        """One solo run; seconds."""
        rid = next(self._ids)
        self.b.stage(rid, model, {})
        self.b.launch(Launch(rid, model, index, self.streams[0]))
        while True:
            for c in self.b.poll(1.0):
                self.b.release(rid)
                return self._done(c)

    def co_run(self, a: tuple[str, int], b: tuple[str, int]) -> tuple[float, float]:
        """First-run durations of a and b started together, each relaunched until both ended."""
        first: dict[int, float] = {}
        streams = {self.streams[0]: a, self.streams[1]: b}
        outstanding = 0

        def start(stream: int) -> None:
            nonlocal outstanding
            rid = next(self._ids)
            self.b.stage(rid, streams[stream][0], {})
            self.b.launch(Launch(rid, *streams[stream], stream))
            outstanding += 1
        for s in self.streams:
            start(s)
        while outstanding:          # until both first runs ended and the device is idle again
            for c in self.b.poll(1.0):
                outstanding -= 1
                self.b.release(c.launch.request_id)
                first.setdefault(c.launch.stream, self._done(c))
                if len(first) < 2:
                    start(c.launch.stream)
        return first[self.streams[0]], first[self.streams[1]]

    def solo(self, model: str, index: int, runs: int, min_window_s: float) -> float:
        """Median of back-to-back solo runs: `runs` of them, and more until `min_window_s` of
        wall time has passed (so telemetry sampled every ~0.1 s sees the window)."""
        started = time.monotonic()
        times = [self.run(model, index) for _ in range(runs)]
        while time.monotonic() - started < min_window_s:
            times.append(self.run(model, index))
        return statistics.median(times)

    def with_probe(self, sm: float, model: str, index: int, runs: int) -> float:
        """Median run time beside a compute probe (medians tame an OS scheduler's noise)."""
        key = self.b.launch_probe(sm, 0.0, PROBE_S)
        try:
            return statistics.median(self.run(model, index) for _ in range(runs))
        finally:
            self.b.stop_probe(key)
