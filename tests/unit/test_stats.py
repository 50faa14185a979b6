"""Per-model statistics: percentiles, SLO attainment, the latency window, bad-request counters."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgesched import stats as stats_module
from edgesched.stats import WINDOW, Stats


def snap(stats: Stats, model: str = "m") -> dict:
    return stats.snapshot()["models"][model]


def test_fresh_stats_have_no_percentiles_and_no_attainment():
    s = Stats({"m": 50.0, "n": 10.0})
    snapshot = s.snapshot()
    assert set(snapshot["models"]) == {"m", "n"}
    assert snapshot["unknown_model"] == 0 and snapshot["undecodable"] == 0
    assert snap(s) == {"completed": 0, "failed": 0, "expired": 0, "rejected": 0, "invalid": 0,
                       "p50_ms": None, "p99_ms": None, "slo_ms": 50.0,
                       "slo_met": 0, "slo_attainment": None, "queue_depth": 0,
                       "queue_peak": 0}


def test_percentiles_of_completed_latencies():
    s = Stats({"m": 1000.0})
    for ms in np.random.default_rng(3).permutation(np.arange(1, 101)):
        s.completed("m", float(ms))
    m = snap(s)
    assert m["completed"] == 100
    assert m["p50_ms"] == pytest.approx(50.5)
    assert m["p99_ms"] == pytest.approx(99.01)
    assert isinstance(m["p50_ms"], float) and isinstance(m["p99_ms"], float)


def test_single_latency_is_every_percentile():
    s = Stats({"m": 10.0})
    s.completed("m", 7.25)
    assert (snap(s)["p50_ms"], snap(s)["p99_ms"]) == (7.25, 7.25)


def test_slo_attainment_counts_met_completions_over_every_accountable_outcome():
    s = Stats({"m": 50.0})
    for ms in (10.0, 50.0, 50.001, 120.0):     # 50.0 is within the SLO (<=)
        s.completed("m", ms)
    for outcome in ("failed", "expired", "expired", "rejected"):
        s.count("m", outcome)
    for _ in range(5):
        s.count("m", "invalid")                 # client bugs are not the service's fault
    m = snap(s)
    assert (m["completed"], m["failed"], m["expired"], m["rejected"], m["invalid"]) == \
        (4, 1, 2, 1, 5)
    assert m["slo_attainment"] == pytest.approx(2 / 8)


def test_only_invalid_requests_leave_attainment_undefined():
    s = Stats({"m": 50.0})
    s.count("m", "invalid")
    assert snap(s)["slo_attainment"] is None


def test_all_rejected_is_zero_attainment():
    s = Stats({"m": 50.0})
    s.count("m", "rejected")
    assert snap(s)["slo_attainment"] == 0.0


def test_models_are_counted_separately():
    s = Stats({"a": 10.0, "b": 100.0})
    s.completed("a", 20.0)
    s.completed("b", 20.0)
    s.count("b", "failed")
    assert snap(s, "a")["slo_attainment"] == 0.0
    assert snap(s, "b")["slo_attainment"] == 0.5
    assert snap(s, "a")["failed"] == 0


def test_window_keeps_only_the_latest_latencies():
    s = Stats({"m": 100.0})
    for _ in range(10):
        s.completed("m", 1e6)                   # the oldest: overwritten after a wrap
    for _ in range(WINDOW):
        s.completed("m", 1.0)
    m = snap(s)
    assert m["completed"] == WINDOW + 10        # counters are not windowed
    assert m["p50_ms"] == 1.0 and m["p99_ms"] == 1.0
    assert m["slo_attainment"] == pytest.approx(WINDOW / (WINDOW + 10))


def test_window_wrap_mixes_old_and_new_entries(monkeypatch):
    monkeypatch.setattr(stats_module, "WINDOW", 8)
    s = Stats({"m": 100.0})
    for ms in range(1, 12):                     # 11 latencies into 8 slots
        s.completed("m", float(ms))
    m = snap(s)
    # Slots hold 9, 10, 11, 4, 5, 6, 7, 8: the latest 8, whatever their order in memory.
    assert m["p50_ms"] == pytest.approx(float(np.percentile(np.arange(4, 12), 50)))
    assert m["p99_ms"] == pytest.approx(float(np.percentile(np.arange(4, 12), 99)))


def test_before_the_window_fills_only_recorded_latencies_count():
    s = Stats({"m": 100.0})
    s.completed("m", 3.0)
    s.completed("m", 5.0)
    assert snap(s)["p50_ms"] == 4.0            # no zeros from the unused slots


def test_bad_request_counters():
    s = Stats({"m": 10.0})
    s.count_bad_request(unknown_model=True)
    s.count_bad_request(unknown_model=True)
    s.count_bad_request(unknown_model=False)
    snapshot = s.snapshot()
    assert (snapshot["unknown_model"], snapshot["undecodable"]) == (2, 1)
    assert snap(s)["invalid"] == 0 and snap(s)["slo_attainment"] is None


def test_queue_depth_is_reported_per_model():
    s = Stats({"a": 10.0, "b": 10.0})
    s.set_queue_depth("a", 3)
    s.set_queue_depth("a", 1)
    assert snap(s, "a")["queue_depth"] == 1 and snap(s, "b")["queue_depth"] == 0
    assert snap(s, "a")["queue_peak"] == 3 and snap(s, "b")["queue_peak"] == 0


def test_snapshot_is_a_copy():
    s = Stats({"m": 10.0})
    before = s.snapshot()
    s.completed("m", 1.0)
    assert before["models"]["m"]["completed"] == 0


def test_concurrent_updates_are_not_lost():
    s = Stats({"m": 10.0})
    per_thread, threads = 500, 4
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for i in range(per_thread):
            s.completed("m", 5.0)
            s.count("m", "failed")
            s.snapshot()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    m = snap(s)
    assert m["completed"] == m["failed"] == per_thread * threads
    assert m["slo_attainment"] == pytest.approx(0.5)


def test_histograms_bucket_seconds_and_sum_each_timing():
    s = Stats({"m": 50.0})
    for total, queue, device in ((0.5, 0.1, 0.4), (33.0, 3.0, 30.0), (20_000.0, 1.0, 2.0)):
        s.completed("m", total, queue, device)
    h = s.snapshot(histograms=True)["models"]["m"]["histograms"]
    assert "histograms" not in snap(s)
    bounds = stats_module.BUCKETS_S
    total = h["total"]["counts"]
    assert len(total) == len(bounds) + 1 and sum(total) == 3
    assert total[0] == 1 and total[bounds.index(0.033)] == 1 and total[-1] == 1   # le=0.033
    assert h["total"]["sum_s"] == pytest.approx(20.0335)
    assert h["queue"]["sum_s"] == pytest.approx(0.0041) and sum(h["device"]["counts"]) == 3


def test_stream_busy_seconds_add_up():
    s = Stats({"m": 50.0})
    s.set_streams(2)
    s.stream_busy(1, 0.25)
    s.stream_busy(1, 0.5)
    s.stream_busy(5, 1.0)                 # a stream the stats do not know: ignored
    assert s.snapshot()["stream_busy_s"] == [0.0, 0.75]


def test_set_queue_depths_is_set_queue_depth_for_each_in_order():
    one, two = Stats({"m": 10.0, "n": 10.0}), Stats({"m": 10.0, "n": 10.0})
    depths = [("m", 1), ("m", 3), ("n", 2), ("m", 2)]
    one.set_queue_depths(depths)
    for model, depth in depths:
        two.set_queue_depth(model, depth)
    assert one.queue_depth == two.queue_depth == {"m": 2, "n": 2}
    assert one.queue_peak == two.queue_peak == {"m": 3, "n": 2}
