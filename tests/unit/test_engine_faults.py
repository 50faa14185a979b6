"""Faults in the engine on the fake backend's virtual clock: slices that fail or hang, the
launch timeout, stuck streams, and the per-model circuit breaker (edgesched.sched.health).

A fake launch with duration None never ends until the test says so: that is a hung slice.
"""
from __future__ import annotations

import pytest

from edgesched.errors import ModelUnavailable, ServerError
from edgesched.sched.health import Health
from tests.engine_harness import RT, Harness, engine_id
from tests.fakes import model_info

TIMEOUT_S = 1.0
RETRY_S = 4.0


def harness(models, streams=2, unhealthy_after=3, **fake_kw) -> Harness:
    models = list(models)
    health = Health([m.name for m in models], unhealthy_after, RETRY_S)
    return Harness(models, "priority", streams=streams, default_duration_s=0.125,
                   engine_kw={"launch_timeout_s": TIMEOUT_S, "health": health}, **fake_kw)


def health(h: Harness, model: str) -> dict:
    return h.engine.health.snapshot()[model]


def test_a_hung_slice_fails_only_its_request_and_holds_its_stream_until_it_ends():
    h = harness([model_info("hangs"), model_info("fine", priority=RT)],
                durations={("hangs", 0): None})
    stuck = h.submit("hangs")
    h.step(0.0)
    assert [r.launch.request_id for r in h.fake.running()] == [engine_id(stuck)]
    for _ in range(12):                                 # 1.5 s of work for the other model
        h.submit("fine")
    h.run()
    error = h.error(stuck, ServerError)
    assert "launch timeout" in str(error) and "'hangs'" in str(error)
    assert h.answer(stuck).at_s == pytest.approx(TIMEOUT_S)
    for tag in range(2, 14):
        h.ok(tag)
    # Every `fine` launch went to the one stream the hung slice did not hold.
    held = h.fake.running()[0].launch.stream
    assert {r.launch.stream for r in h.fake.runs[1:]} == {1 - held}
    assert h.engine.stuck_streams == 1 and h.engine.idle
    assert h.counters("hangs")["failed"] == 1
    assert engine_id(stuck) in h.fake.live_requests()    # a hung kernel may still use them

    h.fake.finish(engine_id(stuck), at_s=h.fake.clock() + 0.5)   # the slice ends after all
    h.step(1.0)
    assert h.engine.stuck_streams == 0
    assert h.engine.state.free_streams() == [0, 1]
    assert engine_id(stuck) in h.fake.released
    assert len(h.answers[stuck]) == 1                   # the late end is not a second answer
    h.assert_clean()


def test_a_timed_out_model_is_unhealthy_and_not_retried_while_its_slice_is_stuck():
    h = harness([model_info("hangs"), model_info("fine")], durations={("hangs", 0): None})
    first = h.submit("hangs")
    h.step(0.0)
    h.fake.advance(TIMEOUT_S)
    h.step(0.0)
    h.error(first, ServerError)
    snap = health(h, "hangs")
    assert not snap["healthy"] and snap["timeouts"] == 1
    assert "launch timeout" in snap["last_error"]
    assert health(h, "fine")["healthy"]
    # Long past the retry interval, but the hung launch still holds a stream: no probe.
    h.fake.advance(3 * RETRY_S)
    refused = h.submit("hangs")
    h.step(0.0)
    error = h.error(refused, ModelUnavailable)
    assert "unhealthy" in str(error) and "'hangs'" in str(error)
    assert len(h.fake.runs) == 1
    ok = h.submit("fine")
    h.run()
    h.ok(ok)


def test_consecutive_failures_mark_a_model_unhealthy_and_fail_its_queue():
    h = harness([model_info("flaky"), model_info("fine")], streams=1, unhealthy_after=3,
                fail_if=lambda launch: "CUDA error" if launch.model == "flaky" else None)
    tags = [h.submit("flaky") for _ in range(6)]
    h.run()
    for tag in tags[:3]:
        assert "CUDA error" in str(h.error(tag, ServerError))
    for tag in tags[3:]:                                # queued when the third failed: not run
        h.error(tag, ModelUnavailable)
    assert len(h.fake.runs) == 3
    snap = health(h, "flaky")
    assert not snap["healthy"] and snap["consecutive_failures"] == 3
    assert h.counters("flaky")["failed"] == 6
    h.assert_clean()


def test_failures_between_successes_do_not_mark_a_model_unhealthy():
    h = harness([model_info("flaky")], streams=1, unhealthy_after=2,
                fail_if=lambda launch: "boom" if launch.request_id % 2 else None)
    tags = [h.submit("flaky") for _ in range(8)]
    h.run()
    assert sum(h.result(t).error is None for t in tags) == 4
    assert health(h, "flaky")["healthy"] and health(h, "flaky")["failures"] == 4


def test_an_unhealthy_model_gets_one_probe_per_interval_and_recovers_on_success():
    broken = {"yes": True}
    h = harness([model_info("flaky")], streams=1, unhealthy_after=1,
                fail_if=lambda launch: "boom" if broken["yes"] else None)
    h.submit("flaky")
    h.run()
    assert not health(h, "flaky")["healthy"]
    early = h.submit("flaky")                           # before the retry interval
    h.run()
    h.error(early, ModelUnavailable)

    h.fake.advance(RETRY_S)
    probe, refused = h.submit("flaky"), h.submit("flaky")   # one probe per interval
    h.run()
    h.error(probe, ServerError)                         # it ran, and failed again
    h.error(refused, ModelUnavailable)
    assert len(h.fake.runs) == 2

    broken["yes"] = False
    h.fake.advance(RETRY_S / 2)
    refused = h.submit("flaky")                         # the failed probe restarted the wait
    h.run()
    h.error(refused, ModelUnavailable)
    h.fake.advance(RETRY_S)
    probe = h.submit("flaky")
    h.run()
    h.ok(probe)
    assert health(h, "flaky")["healthy"] and health(h, "flaky")["consecutive_failures"] == 0
    after = [h.submit("flaky") for _ in range(3)]
    h.run()
    for tag in after:
        h.ok(tag)
    h.assert_clean()


def test_when_every_stream_is_stuck_waiting_requests_fail_instead_of_waiting_forever():
    h = harness([model_info("hangs", instances=2, priority=RT), model_info("fine")],
                durations={("hangs", 0): None})
    hung = [h.submit("hangs"), h.submit("hangs")]
    h.step(0.0)
    h.fake.advance(TIMEOUT_S)
    h.step(0.0)
    assert h.engine.stuck_streams == 2
    for tag in hung:
        h.error(tag, ServerError)
    waiting = h.submit("fine")
    h.step(0.0)
    assert "every stream" in str(h.error(waiting, ServerError))
    assert health(h, "fine")["healthy"]                # not the model's fault
    for tag in hung:
        h.fake.finish(engine_id(tag), at_s=h.fake.clock())
    h.step(0.0)
    again = h.submit("fine")
    h.run()
    h.ok(again)
    h.assert_clean()


def test_a_slice_that_finishes_just_in_time_is_not_timed_out():
    h = harness([model_info("slow", 2)], durations={("slow", 0): TIMEOUT_S * 0.75,
                                                     ("slow", 1): TIMEOUT_S * 0.75})
    tag = h.submit("slow")       # 1.5 timeouts in all, but each launch stays within its own
    h.run()
    h.ok(tag)
    assert health(h, "slow")["timeouts"] == 0
    h.assert_clean()
