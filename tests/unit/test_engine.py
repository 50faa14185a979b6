"""The engine loop driven by the fake backend on its virtual clock: deterministic, instant.

Times are dyadic fractions of a second (0.25, 0.125, ...) so virtual-clock sums are exact.
Engine request ids are handed out in submission order starting at 1; the harness relies on
that to aim the fake's fault injection at one request.
"""
from __future__ import annotations

import random
import threading

import pytest

from edgesched.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    ServerError,
    ShuttingDown,
)
from edgesched.types import ModelInfo
from tests.engine_harness import BE, POLICY_NAMES, RT, Harness, engine_id  # noqa: F401
from tests.fakes import model_info

# --- one request, its slices, its timings -------------------------------------------------

@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_three_slice_request_runs_its_slices_in_order_with_consistent_timings(policy):
    h = Harness([model_info("first"), model_info("three", 3)], policy, streams=1,
                durations={("first", 0): 1.0, ("three", 0): 0.25, ("three", 1): 0.5,
                           ("three", 2): 0.125})
    first = h.submit("first")
    three = h.submit("three")
    h.run()
    h.assert_clean()
    h.ok(first)
    result = h.ok(three)
    assert result.model == "three" and result.reply_to == three
    launches = h.fake.launches_of(engine_id(three))
    assert [launch.slice_index for launch in launches] == [0, 1, 2]
    assert [r.start_s for r in h.fake.runs if r.launch.request_id == engine_id(three)] == \
        [1.0, 1.25, 1.75]
    t = result.timings
    assert t.queue_ms == pytest.approx(1000.0)
    assert t.device_ms == pytest.approx(875.0)
    assert t.total_ms == pytest.approx(1875.0)
    assert h.answer(three).at_s == pytest.approx(1.875)


def test_timings_count_waiting_between_slices_in_total_not_in_device_time():
    # greedy, one instance of "m" slice 1: request 2 waits for slice 1 of request 1.
    h = Harness([model_info("m", 2, instances=1)], "greedy", streams=2,
                durations={("m", 0): 0.25, ("m", 1): 1.0})
    a, b = h.submit("m"), h.submit("m")
    h.run()
    h.assert_clean()
    ta, tb = h.ok(a).timings, h.ok(b).timings
    assert (ta.queue_ms, ta.device_ms, ta.total_ms) == pytest.approx((0.0, 1250.0, 1250.0))
    # b: slice 0 at 0.25..0.5, waits for m/1 until 1.25, slice 1 1.25..2.25
    assert (tb.queue_ms, tb.device_ms, tb.total_ms) == pytest.approx((250.0, 1250.0, 2250.0))


# --- exactly one answer per submission ----------------------------------------------------

def mixed_models() -> list[ModelInfo]:
    return [model_info("cam", 2, slo_ms=50.0, priority=RT, instances=2),
            model_info("tagger", 3, slo_ms=500.0, instances=1),
            model_info("flaky", 1, slo_ms=200.0, instances=1)]


MIXED_DURATIONS = {("cam", 0): 1 / 64, ("cam", 1): 1 / 64, ("tagger", 0): 1 / 32,
                   ("tagger", 1): 1 / 32, ("tagger", 2): 1 / 32, ("flaky", 0): 1 / 16}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_mixed_run_answers_every_submission_exactly_once(policy):
    h = Harness(mixed_models(), policy, streams=3, queue_depth=5, durations=MIXED_DURATIONS,
                fail_if=lambda launch: "injected fault" if launch.model == "flaky"
                and launch.request_id % 3 == 0 else None)
    rng = random.Random(7)
    for i in range(120):
        model = rng.choice(["cam", "cam", "tagger", "flaky"])
        now = h.fake.clock()
        deadline = rng.choice([None, None, now, now - 1 / 64, now + 1 / 128, now + 1 / 16,
                               now + 1 / 4, now + 1.0])
        h.submit(model, deadline_s=deadline)
        for _ in range(rng.choice([0, 0, 1, 2])):
            h.step(max_wait_s=1 / 128)
    h.run()
    h.assert_clean()

    outcomes = {m: {"completed": 0, "failed": 0, "expired": 0, "rejected": 0, "met": 0}
                for m in h.models}
    for tag, sub in h.submitted.items():
        answer = h.answer(tag)
        result = answer.result
        assert result.model == sub.model and result.reply_to == tag
        counts = outcomes[sub.model]
        if result.error is None:
            result = h.ok(tag)
            t = result.timings
            assert 0 <= t.queue_ms and 0 < t.device_ms
            assert t.total_ms >= t.queue_ms + t.device_ms - 1e-9
            assert answer.at_s == pytest.approx(sub.arrival_s + t.total_ms / 1e3)
            if sub.deadline_s is not None:
                assert answer.at_s <= sub.deadline_s
            counts["completed"] += 1
            counts["met"] += t.total_ms <= h.models[sub.model].slo_ms
        elif isinstance(result.error, DeadlineExceeded):
            assert sub.deadline_s is not None and answer.at_s >= sub.deadline_s
            counts["expired"] += 1
        elif isinstance(result.error, Overloaded):
            assert engine_id(tag) not in h.fake.staged
            counts["rejected"] += 1
        else:
            # A failed launch, or refused unlaunched while three failures in a row have the
            # model marked unhealthy.
            assert isinstance(result.error, (ServerError, ModelUnavailable)), repr(result.error)
            assert sub.model == "flaky" and "injected fault" in str(result.error)
            if isinstance(result.error, ModelUnavailable):
                assert engine_id(tag) not in {r.launch.request_id for r in h.fake.runs}
            counts["failed"] += 1
    if policy == "fifo":
        assert h.fake.max_concurrent == 1
    else:
        assert h.fake.max_concurrent > 1
    # No slice ever starts at or after its request's deadline.
    for run in h.fake.runs:
        sub = h.submitted[run.launch.request_id]
        if sub.deadline_s is not None:
            assert run.start_s < sub.deadline_s
    for model, counts in outcomes.items():
        snap = h.counters(model)
        assert {k: snap[k] for k in ("completed", "failed", "expired", "rejected")} == \
            {k: counts[k] for k in ("completed", "failed", "expired", "rejected")}
        accountable = sum(counts[k] for k in ("completed", "failed", "expired", "rejected"))
        assert snap["slo_attainment"] == pytest.approx(counts["met"] / accountable)
    every = [sum(c[k] for c in outcomes.values()) for k in ("completed", "failed", "expired",
                                                               "rejected")]
    assert all(n > 0 for n in every), f"the workload should exercise every outcome: {every}"


def test_submit_is_safe_from_many_threads_while_the_engine_steps():
    h = Harness([model_info("a", 2, instances=4), model_info("b", instances=4)], "greedy",
                streams=4, queue_depth=10_000, default_duration_s=1 / 64)
    per_thread, threads = 100, 4
    barrier = threading.Barrier(threads)

    def client(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            h.submit("a" if (i + k) % 2 else "b")

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for _ in range(100_000):
        alive = any(w.is_alive() for w in workers)
        if not alive and h.engine.idle:
            break
        h.step(max_wait_s=1 / 64)
    for w in workers:
        w.join()
    h.run()
    assert len(h.submitted) == per_thread * threads
    h.assert_clean()
    for tag in h.submitted:
        h.ok(tag)
    assert h.fake.wakes == per_thread * threads
    assert sorted(h.fake.staged) == list(range(1, per_thread * threads + 1))


# --- failures and aborts ------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_failing_slice_fails_only_its_request(policy):
    h = Harness([model_info("m", 3, instances=2)], policy, streams=2,
                errors={(engine_id(2), 1): "CUDA error: illegal address"})
    tags = [h.submit("m") for _ in range(4)]
    h.run()
    h.assert_clean()
    error = h.error(tags[1], ServerError)
    assert "slice 1" in str(error) and "illegal address" in str(error)
    for tag in (tags[0], tags[2], tags[3]):
        h.ok(tag)
    assert [launch.slice_index for launch in h.fake.launches_of(engine_id(tags[1]))] == [0, 1]
    assert engine_id(tags[1]) in h.fake.released
    snap = h.counters("m")
    assert (snap["failed"], snap["completed"]) == (1, 3)


def test_abort_all_answers_everything_outstanding():
    h = Harness([model_info("m", 2, instances=4)], "greedy", streams=2,
                durations={("m", 0): 1.0, ("m", 1): 1.0})
    tags = [h.submit("m") for _ in range(5)]
    h.step(0)
    assert len(h.fake.running()) == 2
    late = h.submit("m")                    # still in the inbox
    h.engine.abort_all(ShuttingDown("the server stopped before the request finished"))
    for tag in [*tags, late]:
        error = h.error(tag, ShuttingDown)
        assert "stopped" in str(error)
    assert set(h.answers) == set(h.submitted)
    assert h.engine.idle and len(h.engine.state) == 0
    assert h.fake.live_requests() == set()
    assert h.counters("m")["failed"] == 6
    assert h.counters("m")["queue_depth"] == 0


# --- stats --------------------------------------------------------------------------------

def test_stats_counters_match_what_happened():
    # fifo, one stream, 0.25 s per request: latencies 250, 500, 750, 1000 ms (SLO 600 ms).
    h = Harness([model_info("a", slo_ms=600.0), model_info("idle")], "fifo", streams=1,
                queue_depth=5, durations={("a", 0): 0.25})
    expired = h.submit("a", deadline_s=0.0)          # id 1: past at admission
    good = [h.submit("a") for _ in range(4)]         # ids 2..5
    failing = h.submit("a")                          # id 6
    h.fake.errors[(engine_id(failing), 0)] = "boom"
    overflow = h.submit("a")                         # 5 already pending
    h.step(0)
    assert h.counters("a")["queue_depth"] == 5
    h.run()
    h.assert_clean()
    h.error(expired, DeadlineExceeded)
    h.error(failing, ServerError)
    h.error(overflow, Overloaded)
    assert [h.ok(t).timings.total_ms for t in good] == pytest.approx([250, 500, 750, 1000])
    snap = h.counters("a")
    assert {k: snap[k] for k in ("completed", "failed", "expired", "rejected", "invalid")} == \
        {"completed": 4, "failed": 1, "expired": 1, "rejected": 1, "invalid": 0}
    assert snap["slo_attainment"] == pytest.approx(2 / 7)
    assert snap["p50_ms"] == pytest.approx(625.0)
    assert snap["p99_ms"] == pytest.approx(992.5)
    assert h.counters("idle")["slo_attainment"] is None
    assert h.counters("idle")["p50_ms"] is None


# --- policies compared on one workload ----------------------------------------------------

def concurrency_run(policy: str) -> Harness:
    h = Harness([model_info("cam", 2, priority=RT, instances=2),
                 model_info("tagger", 3, instances=2)], policy, streams=4,
                durations={("cam", 0): 1 / 32, ("cam", 1): 1 / 32, ("tagger", 0): 1 / 16,
                           ("tagger", 1): 1 / 16, ("tagger", 2): 1 / 16})
    for i in range(12):
        h.submit("cam" if i % 2 else "tagger")
    h.run()
    h.assert_clean()
    for tag in h.submitted:
        h.ok(tag)
    return h


def test_fifo_never_runs_two_launches_at_once():
    h = concurrency_run("fifo")
    assert h.fake.max_concurrent == 1
    # Steps that do not wait for a completion (new work arriving) must not start more.
    h = Harness([model_info("a", 2, instances=4), model_info("b", instances=4)], "fifo",
                streams=4, default_duration_s=1 / 16)
    for i in range(8):
        h.submit("a" if i % 2 else "b")
        h.step(0)
        h.step(1 / 64)
    h.run()
    h.assert_clean()
    assert h.fake.max_concurrent == 1
    runs = sorted(h.fake.runs, key=lambda r: r.start_s)
    for earlier, later in zip(runs, runs[1:]):
        assert later.start_s >= earlier.finish_s


def test_greedy_and_priority_overlap_work_that_fifo_serialises():
    fifo, greedy, prio = (concurrency_run(p) for p in ("fifo", "greedy", "priority"))
    assert fifo.fake.max_concurrent == 1
    assert greedy.fake.max_concurrent == 4      # 2 instances x 2 models fill 4 streams
    assert prio.fake.max_concurrent >= 2
    # Same work, same device time; the virtual makespan shows the overlap.
    device = [sum(r.finish_s - r.start_s for r in h.fake.runs) for h in (fifo, greedy, prio)]
    assert device[0] == pytest.approx(device[1]) == pytest.approx(device[2])
    assert fifo.fake.clock() == pytest.approx(device[0])
    assert fifo.fake.clock() >= 2 * greedy.fake.clock()
    assert fifo.fake.clock() > prio.fake.clock()
