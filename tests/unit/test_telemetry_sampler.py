"""The telemetry Sampler: window averages, read errors, its bounded ring buffer."""
from __future__ import annotations

import logging
import threading

import pytest

from edgesched.telemetry import Sampler, TelemetrySample

# --- Sampler --------------------------------------------------------------------------------

class ScriptedReader:
    """Sample k carries time_s = k (a fake clock) and gpu_load_pct = 10 k; reads listed in
    `fail_on` raise; `done` is set after `until` successful reads."""

    name = "scripted"

    def __init__(self, until: int, fail_on: frozenset[int] = frozenset()):
        self.calls = 0
        self.k = 0
        self.until, self.fail_on = until, fail_on
        self.done = threading.Event()

    def read(self) -> TelemetrySample:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"flaky read {self.calls}")
        k = self.k = self.k + 1
        if k >= self.until:
            self.done.set()
        return TelemetrySample(
            time_s=float(k), gpu_load_pct=10.0 * k,
            emc_util_pct=float(k) if k % 2 == 0 else None,        # only even samples have it
            temps_c={"cpu": 40.0 + k} if k <= 3 else {"gpu": 50.0},
            nvpmodel="MAXN" if k < 4 else "MODE_15W", jetson_clocks=k % 2 == 0)

    def close(self) -> None:
        pass


def test_sampler_window_averages(monkeypatch):
    reader = ScriptedReader(until=6)
    with Sampler(reader, interval_s=0.001) as sampler:
        assert reader.done.wait(5.0)
    assert not sampler.running
    w = sampler.window(2.0, 5.0)                          # samples k = 2, 3, 4, 5
    assert w.time_s == 5.0
    assert w.gpu_load_pct == pytest.approx(35.0)
    assert w.emc_util_pct == pytest.approx(3.0)           # mean of k = 2 and 4 only
    assert w.gpu_freq_mhz is None and w.power_mw is None  # no sample had them
    assert w.temps_c == pytest.approx({"cpu": 42.5, "gpu": 50.0})
    assert w.nvpmodel == "MODE_15W" and w.jetson_clocks is False   # the newest values
    assert sampler.window(3.0).gpu_load_pct == pytest.approx(
        sum(10.0 * k for k in range(3, reader.k + 1)) / (reader.k - 2))
    empty = sampler.window(100.0, 200.0)
    assert empty == TelemetrySample(time_s=200.0)
    assert sampler.latest().time_s == float(reader.k)


def test_sampler_survives_read_errors_and_logs_once(caplog):
    reader = ScriptedReader(until=5, fail_on=frozenset({2, 3, 4}))
    sampler = Sampler(reader, interval_s=0.001)
    with caplog.at_level(logging.WARNING, logger="edgesched.telemetry.sampler"):
        sampler.start()
        assert reader.done.wait(5.0)
        assert sampler.running
        sampler.stop()
    assert sampler.errors == 3 and sampler.reads >= 5
    assert "flaky read 4" in sampler.last_error
    warnings = [r for r in caplog.records if r.name == "edgesched.telemetry.sampler"]
    assert len(warnings) == 1 and "flaky read 2" in warnings[0].getMessage()


def test_sampler_ring_buffer_is_bounded_and_stop_is_final():
    reader = ScriptedReader(until=12)
    sampler = Sampler(reader, interval_s=0.001, capacity=5)
    assert sampler.latest() is None
    sampler.start()
    sampler.start()                                      # already running: no second thread
    assert reader.done.wait(5.0)
    sampler.stop()
    kept = sampler.samples()
    assert [s.time_s for s in kept] == [float(k) for k in range(reader.k - 4, reader.k + 1)]
    calls = reader.calls
    sampler.stop()
    assert reader.calls == calls                         # nothing reads after stop()
    with pytest.raises(ValueError):
        Sampler(reader, interval_s=0)
