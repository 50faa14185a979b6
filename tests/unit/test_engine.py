"""The engine loop driven by the fake backend on its virtual clock: deterministic, instant.

Times are dyadic fractions of a second (0.25, 0.125, ...) so virtual-clock sums are exact.
Engine request ids are handed out in submission order starting at 1; the harness relies on
that to aim the fake's fault injection at one request.
"""
from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from edgesched.engine import Engine, Result, Submission
from edgesched.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    RequestError,
    ServerError,
    ShuttingDown,
)
from edgesched.sched import make_policy
from edgesched.types import ModelInfo, Priority
from tests.fakes import FakeBackend, model_info

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
POLICY_NAMES = ["fifo", "greedy", "priority"]


@dataclass
class Answer:
    at_s: float          # fake clock when on_result was called
    result: Result


class Harness:
    """An Engine over a FakeBackend; reply_to is a tag per submission."""

    def __init__(self, models: list[ModelInfo], policy: str = "greedy", *, streams: int = 2,
                 queue_depth: int = 64, engine_kw: dict | None = None, **fake_kw):
        self.models = {m.name: m for m in models}
        self.fake = FakeBackend(streams, models=self.models, **fake_kw)
        self.answers: dict[int, list[Answer]] = {}
        self.submitted: dict[int, Submission] = {}
        self._tags = itertools.count(1)
        self._lock = threading.Lock()
        self.engine = Engine(self.fake, self.models, make_policy(policy),
                             queue_depth=queue_depth, on_result=self._on_result,
                             clock=self.fake.clock, **(engine_kw or {}))

    def _on_result(self, result: Result) -> None:
        with self._lock:
            self.answers.setdefault(result.reply_to, []).append(Answer(self.fake.clock(), result))

    def submit(self, model: str, *, x: int | None = None, deadline_s: float | None = None,
               priority: Priority | None = None, arrival_s: float | None = None) -> int:
        tag = next(self._tags)
        sub = Submission(model, {"x": np.array([tag if x is None else x], dtype=np.int64)},
                         self.fake.clock() if arrival_s is None else arrival_s,
                         deadline_s, priority, reply_to=tag)
        with self._lock:
            self.submitted[tag] = sub
        self.engine.submit(sub)
        return tag

    def step(self, max_wait_s: float = 1.0) -> None:
        self.engine.step(max_wait_s)

    def run(self, max_steps: int = 10_000, max_wait_s: float = 1.0) -> None:
        for _ in range(max_steps):
            if self.engine.idle:
                return
            self.engine.step(max_wait_s)
        raise AssertionError("the engine did not go idle")

    def answer(self, tag: int) -> Answer:
        answers = self.answers.get(tag, [])
        assert len(answers) == 1, f"submission {tag} answered {len(answers)} times"
        return answers[0]

    def result(self, tag: int) -> Result:
        return self.answer(tag).result

    def error(self, tag: int, cls: type[RequestError]) -> RequestError:
        result = self.result(tag)
        assert isinstance(result.error, cls), f"submission {tag}: {result.error!r}"
        assert result.outputs is None and result.timings is None
        assert "\n" not in str(result.error) and str(result.error)
        return result.error

    def ok(self, tag: int) -> Result:
        result = self.result(tag)
        assert result.error is None, f"submission {tag}: {result.error!r}"
        n = self.models[result.model].num_slices
        np.testing.assert_array_equal(result.outputs["y"], [tag, *range(n)])
        return result

    def counters(self, model: str) -> dict:
        return self.engine.stats.snapshot()["models"][model]

    def assert_clean(self) -> None:
        """Every submission answered once; nothing left in the engine or the backend."""
        assert set(self.answers) == set(self.submitted)
        for tag in self.submitted:
            self.answer(tag)
        assert self.engine.idle
        assert len(self.engine.state) == 0 and not self.engine.state.running
        assert self.engine.state.free_streams() == list(range(self.fake.num_streams))
        assert self.fake.live_requests() == set()
        assert self.fake.running() == []
        for model in self.models:
            assert self.engine.state.pending(model) == 0
            assert self.counters(model)["queue_depth"] == 0


def engine_id(tag: int) -> int:
    return tag   # ids are given in submission order, starting at 1, like the harness's tags


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


# --- admission ----------------------------------------------------------------------------

def test_queue_overflow_is_overloaded_and_never_staged():
    h = Harness([model_info("a"), model_info("b")], "fifo", queue_depth=2)
    a1, a2, a3, b1 = h.submit("a"), h.submit("a"), h.submit("a"), h.submit("b")
    h.run()
    h.assert_clean()
    for tag in (a1, a2, b1):
        h.ok(tag)
    error = h.error(a3, Overloaded)
    assert "'a'" in str(error)
    assert engine_id(a3) not in h.fake.staged and len(h.fake.staged) == 3
    assert h.counters("a")["rejected"] == 1 and h.counters("b")["rejected"] == 0


def test_queue_depth_counts_running_requests_until_they_are_answered():
    h = Harness([model_info("a", instances=2)], "greedy", queue_depth=1,
                durations={("a", 0): 0.5})
    first = h.submit("a")
    h.step(0)
    assert h.fake.running()                      # first is on the device
    second = h.submit("a")
    h.step(0)
    h.error(second, Overloaded)
    h.run()
    h.ok(first)
    third = h.submit("a")                        # room again once first was answered
    h.run()
    h.ok(third)
    h.assert_clean()


@pytest.mark.parametrize("offset_s", [0.0, -0.25])
def test_deadline_already_past_at_admission_is_deadline_exceeded(offset_s):
    h = Harness([model_info("a")], "greedy")
    h.fake.set_time(1.0)
    late = h.submit("a", deadline_s=1.0 + offset_s)
    ok = h.submit("a", deadline_s=2.0)
    h.run()
    h.assert_clean()
    h.error(late, DeadlineExceeded)
    h.ok(ok)
    assert h.fake.staged == [engine_id(ok)]
    assert h.counters("a")["expired"] == 1 and h.counters("a")["completed"] == 1


# --- deadlines ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_queued_request_expires_on_time_and_is_never_launched(policy):
    h = Harness([model_info("long"), model_info("short")], policy, streams=1,
                durations={("long", 0): 1.0, ("short", 0): 0.125})
    long = h.submit("long")
    short = h.submit("short", deadline_s=0.5)
    h.run()
    h.assert_clean()
    h.ok(long)
    h.error(short, DeadlineExceeded)
    assert h.answer(short).at_s == pytest.approx(0.5)      # answered when it passed
    assert h.fake.launches_of(engine_id(short)) == []
    assert engine_id(short) in h.fake.released
    assert h.counters("short")["expired"] == 1


def test_deadline_passing_while_running_is_deadline_exceeded_at_completion():
    h = Harness([model_info("a")], "greedy", durations={("a", 0): 1.0})
    tag = h.submit("a", deadline_s=0.5)
    h.run()
    h.assert_clean()
    error = h.error(tag, DeadlineExceeded)
    assert "running" in str(error)
    assert h.answer(tag).at_s == pytest.approx(1.0)
    assert len(h.fake.launches_of(engine_id(tag))) == 1
    assert engine_id(tag) in h.fake.released and engine_id(tag) not in h.fake.fetched
    assert h.counters("a")["expired"] == 1 and h.counters("a")["completed"] == 0


def test_deadline_passing_during_the_last_slice_of_three():
    h = Harness([model_info("m", 3)], "fifo", durations={("m", i): 0.25 for i in range(3)})
    tag = h.submit("m", deadline_s=0.625)
    h.run()
    h.assert_clean()
    h.error(tag, DeadlineExceeded)
    assert [launch.slice_index for launch in h.fake.launches_of(engine_id(tag))] == [0, 1, 2]
    assert h.answer(tag).at_s == pytest.approx(0.75)


def test_finishing_exactly_at_the_deadline_succeeds():
    h = Harness([model_info("a")], "greedy", durations={("a", 0): 0.5})
    tag = h.submit("a", deadline_s=0.5)
    h.run()
    h.assert_clean()
    h.ok(tag)


def test_request_waiting_between_slices_expires_and_never_runs_its_next_slice():
    # m/1 has one instance, held open by request 1; request 2 finishes slice 0 at 0.5 and
    # then waits for m/1 until its deadline at 0.625.
    h = Harness([model_info("m", 2, instances=1)], "greedy", streams=2,
                durations={("m", 0): 0.25, ("m", 1): None})
    holder = h.submit("m")
    waiter = h.submit("m", deadline_s=0.625)
    for _ in range(1000):
        if waiter in h.answers:
            break
        h.step(1.0)
    h.error(waiter, DeadlineExceeded)
    assert h.answer(waiter).at_s == pytest.approx(0.625)
    assert [launch.slice_index for launch in h.fake.launches_of(engine_id(waiter))] == [0]
    assert engine_id(waiter) not in h.fake.live_requests()
    h.fake.finish(engine_id(holder), at_s=h.fake.clock() + 1.0)
    h.run()
    h.assert_clean()
    h.ok(holder)


def test_request_is_not_launched_again_after_its_deadline_when_a_completion_is_seen_late():
    # Slice 0 finishes at 0.25, before the 0.5 deadline, but the engine only sees that
    # completion at 0.75 (a busy engine thread, a late poll). The deadline had passed by
    # then: slice 1 must not start; the request is answered DeadlineExceeded at once.
    h = Harness([model_info("m", 2)], "greedy", durations={("m", 0): 0.25, ("m", 1): 0.25})
    tag = h.submit("m", deadline_s=0.5)
    h.step(0)                                   # admitted, slice 0 launched at t=0
    assert len(h.fake.launches_of(engine_id(tag))) == 1
    h.fake.set_time(0.75)                       # time passes before the next poll
    for _ in range(3):
        h.step(0)
    launched = [launch.slice_index for launch in h.fake.launches_of(engine_id(tag))]
    assert launched == [0], f"slice 1 started at 0.75 after the 0.5 deadline: {launched}"
    h.error(tag, DeadlineExceeded)
    h.run()
    h.assert_clean()


def test_request_is_not_launched_again_exactly_at_its_deadline():
    # Same, on the boundary: slice 0 ends exactly at the 0.5 deadline and the engine sees it
    # at 0.5. A waiting request whose deadline is <= now counts as expired (see _expire), so
    # slice 1 must not start at 0.5: it could only finish after the deadline.
    h = Harness([model_info("m", 2)], "greedy", durations={("m", 0): 0.5, ("m", 1): 0.25})
    tag = h.submit("m", deadline_s=0.5)
    h.step(0)
    h.fake.set_time(0.5)
    for _ in range(3):
        h.step(0)
    launched = [r.start_s for r in h.fake.runs if r.launch.request_id == engine_id(tag)]
    assert launched == [0.0], f"slice starts {launched} for a 0.5 s deadline"
    h.error(tag, DeadlineExceeded)
    h.run()
    h.assert_clean()


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
