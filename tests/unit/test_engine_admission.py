"""The engine's admission and deadlines, driven by the fake backend on its virtual clock:
queue limits, deadlines passing before, between and during slices."""
from __future__ import annotations

import pytest

from edgesched.errors import DeadlineExceeded, InvalidInput, Overloaded
from tests.engine_harness import BE, POLICY_NAMES, RT, Harness, engine_id  # noqa: F401
from tests.fakes import model_info

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




def test_inputs_the_backend_refuses_at_staging_fail_only_that_request():
    h = Harness([model_info("a", 2)], "greedy")
    bad, good = h.submit("a", x=-1), h.submit("a")
    h.step(0)
    assert h.counters("a")["queue_depth"] == 1         # only the good one is queued
    h.run()
    assert isinstance(h.error(bad, InvalidInput), InvalidInput)
    h.ok(good)
    assert h.counters("a")["invalid"] == 1 and h.counters("a")["failed"] == 0
    assert h.engine.health.snapshot()["a"]["healthy"]
    h.assert_clean()
