"""Per-model service statistics, written by the engine thread and read by the IO thread.

SLO attainment = requests answered successfully within the model's SLO / requests the service
was responsible for (completed + failed + expired + rejected). Malformed requests (a client
bug, not a service outcome) are counted as `invalid` and left out of the ratio.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

WINDOW = 4096          # latest latencies kept per model for percentiles


@dataclass
class _Counters:
    completed: int = 0
    slo_met: int = 0
    failed: int = 0
    expired: int = 0
    rejected: int = 0
    invalid: int = 0


class ModelStats:
    def __init__(self, slo_ms: float):
        self.slo_ms = slo_ms
        self._c = _Counters()
        self._latency_ms = np.zeros(WINDOW)
        self._n = 0

    def snapshot(self) -> dict:
        c = self._c
        window = self._latency_ms[:min(self._n, WINDOW)]
        p50, p99 = (np.percentile(window, [50, 99]).tolist() if window.size else (None, None))
        accountable = c.completed + c.failed + c.expired + c.rejected
        return {"completed": c.completed, "failed": c.failed, "expired": c.expired,
                "rejected": c.rejected, "invalid": c.invalid, "p50_ms": p50, "p99_ms": p99,
                "slo_ms": self.slo_ms,
                "slo_attainment": (c.slo_met / accountable) if accountable else None}


class Stats:
    """All models' statistics behind one lock (updates are a few integer adds)."""

    def __init__(self, slo_ms: dict[str, float]):
        self._lock = threading.Lock()
        self._models = {name: ModelStats(slo) for name, slo in slo_ms.items()}
        self.queue_depth = {name: 0 for name in slo_ms}
        self.queue_peak = {name: 0 for name in slo_ms}   # most requests ever queued at once
        self.unknown_model = 0
        self.undecodable = 0

    def completed(self, model: str, total_ms: float) -> None:
        with self._lock:
            m = self._models[model]
            m._latency_ms[m._n % WINDOW] = total_ms
            m._n += 1
            m._c.completed += 1
            m._c.slo_met += total_ms <= m.slo_ms

    def count(self, model: str, outcome: str) -> None:
        """outcome: failed | expired | rejected | invalid."""
        with self._lock:
            counters = self._models[model]._c
            setattr(counters, outcome, getattr(counters, outcome) + 1)

    def set_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth[model] = depth
        if depth > self.queue_peak[model]:
            self.queue_peak[model] = depth

    def count_bad_request(self, unknown_model: bool) -> None:
        with self._lock:
            if unknown_model:
                self.unknown_model += 1
            else:
                self.undecodable += 1

    def snapshot(self) -> dict:
        with self._lock:
            models = {name: {**m.snapshot(), "queue_depth": self.queue_depth[name],
                             "queue_peak": self.queue_peak[name]}
                      for name, m in self._models.items()}
            return {"models": models, "unknown_model": self.unknown_model,
                    "undecodable": self.undecodable}
