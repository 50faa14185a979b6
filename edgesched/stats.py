"""Per-model service statistics, written by the engine thread and read by others (metrics, top).

SLO attainment = requests answered successfully within the model's SLO / requests the service
was responsible for (completed + failed + expired + rejected). Malformed requests (a client
bug, not a service outcome) are counted as `invalid` and left out of the ratio.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np

WINDOW = 4096          # latest latencies kept per model for percentiles
# Histogram bucket upper bounds, seconds: camera frames (33 ms at 30 fps) sit in the middle;
# 1 ms is a fast slice on an Orin, 10 s the launch timeout's order. +Inf is implied.
BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TIMES = ("total", "queue", "device")   # the Timings fields a histogram is kept for
_bucket = bisect.bisect_left


@dataclass
class _Counters:
    completed: int = 0
    slo_met: int = 0
    failed: int = 0
    expired: int = 0
    rejected: int = 0
    invalid: int = 0


class _Histogram:
    """Counts per bucket (not cumulative) and the sum, in seconds, of completed requests."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)     # the last one is +Inf
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[_bucket(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def snapshot(self) -> dict:
        return {"counts": list(self.counts), "sum_s": self.sum_s}


class ModelStats:
    def __init__(self, slo_ms: float):
        self.slo_ms = slo_ms
        self._c = _Counters()
        # A list, not an array: one item is set per completed request, ~20 ns into a list
        # against ~100 ns into a numpy array; the snapshot copies the list out.
        self._latency_ms = [0.0] * WINDOW
        self._n = 0
        self._hist = {name: _Histogram() for name in TIMES}
        self._hists = (self._hist["total"], self._hist["queue"], self._hist["device"])

    def snapshot(self) -> dict:
        """The counters and a copy of the window: the caller holds the lock for this only."""
        c = self._c
        accountable = c.completed + c.failed + c.expired + c.rejected
        return {"completed": c.completed, "failed": c.failed, "expired": c.expired,
                "rejected": c.rejected, "invalid": c.invalid, "slo_ms": self.slo_ms,
                "slo_met": c.slo_met,
                "slo_attainment": (c.slo_met / accountable) if accountable else None,
                "histograms": {k: h.snapshot() for k, h in self._hist.items()},
                "_window": self._latency_ms[:min(self._n, WINDOW)]}


class Stats:
    """All models' statistics behind one lock (updates are a few integer adds)."""

    def __init__(self, slo_ms: dict[str, float]):
        self._lock = threading.Lock()
        self._models = {name: ModelStats(slo) for name, slo in slo_ms.items()}
        self.queue_depth = {name: 0 for name in slo_ms}
        self.queue_peak = {name: 0 for name in slo_ms}   # most requests ever queued at once
        self.unknown_model = 0
        self.undecodable = 0
        self.stream_busy_s: list[float] = []    # per stream: seconds held by launches, ever

    def set_models(self, slo_ms: dict[str, float], fresh: tuple[str, ...] = ()) -> None:
        """A reload's model set: entries kept (their SLO updated), new or `fresh` ones start
        at zero, the rest dropped."""
        with self._lock:
            kept = {name: self._models[name] for name in slo_ms
                    if name in self._models and name not in fresh}
            for name, slo in slo_ms.items():
                kept.setdefault(name, ModelStats(slo)).slo_ms = slo
                self.queue_depth.setdefault(name, 0)
                self.queue_peak[name] = 0 if name in fresh else self.queue_peak.get(name, 0)
            for name in [n for n in self.queue_depth if n not in slo_ms]:
                del self.queue_depth[name], self.queue_peak[name]
            self._models = kept

    def set_streams(self, streams: int) -> None:
        self.stream_busy_s = [0.0] * streams

    def completed(self, model: str, total_ms: float, queue_ms: float | None = None,
                  device_ms: float | None = None) -> None:
        # Once per answered request on the engine thread: the histograms' observe() inline.
        with self._lock:
            m = self._models[model]
            m._latency_ms[m._n % WINDOW] = total_ms
            m._n += 1
            c = m._c
            c.completed += 1
            c.slo_met += total_ms <= m.slo_ms
            total, queue, device = m._hists
            seconds = total_ms / 1e3
            total.counts[_bucket(BUCKETS_S, seconds)] += 1
            total.sum_s += seconds
            if queue_ms is not None:
                seconds = queue_ms / 1e3
                queue.counts[_bucket(BUCKETS_S, seconds)] += 1
                queue.sum_s += seconds
            if device_ms is not None:
                seconds = device_ms / 1e3
                device.counts[_bucket(BUCKETS_S, seconds)] += 1
                device.sum_s += seconds

    def stream_busy(self, stream: int, seconds: float) -> None:
        """A launch held `stream` for `seconds` (engine thread only; a float add, no lock: a
        reader sees the old or the new value)."""
        busy = self.stream_busy_s
        if stream < len(busy):
            busy[stream] += seconds

    def count(self, model: str, outcome: str) -> None:
        """outcome: failed | expired | rejected | invalid."""
        with self._lock:
            counters = self._models[model]._c
            setattr(counters, outcome, getattr(counters, outcome) + 1)

    def set_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth[model] = depth
        if depth > self.queue_peak[model]:
            self.queue_peak[model] = depth

    def set_queue_depths(self, depths) -> None:
        """set_queue_depth for each (model, depth), in order (two per request: one call)."""
        queue_depth, queue_peak = self.queue_depth, self.queue_peak
        for model, depth in depths:
            queue_depth[model] = depth
            if depth > queue_peak[model]:
                queue_peak[model] = depth

    def count_bad_request(self, unknown_model: bool) -> None:
        with self._lock:
            if unknown_model:
                self.unknown_model += 1
            else:
                self.undecodable += 1

    def snapshot(self, histograms: bool = False) -> dict:
        """Plain values. Percentiles are computed after the lock is released, so the engine
        thread waits for copies only. `histograms`: include the bucket counts (metrics)."""
        with self._lock:
            models = {name: {**m.snapshot(), "queue_depth": self.queue_depth[name],
                             "queue_peak": self.queue_peak[name]}
                      for name, m in self._models.items()}
            out = {"models": models, "unknown_model": self.unknown_model,
                   "undecodable": self.undecodable}
        for m in models.values():
            window = np.array(m.pop("_window"), dtype=np.float64)
            m["p50_ms"], m["p99_ms"] = (np.percentile(window, [50, 99]).tolist() if window.size
                                        else (None, None))
            if not histograms:
                del m["histograms"]
        out["stream_busy_s"] = list(self.stream_busy_s)
        return out
