"""Admission and the meaning of completions as data (sched/lifecycle.py): no backend, no
engine; each test builds submissions and completions by hand and reads the Update."""
from __future__ import annotations

import pytest

from edgesched.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    Overloaded,
    ServerError,
)
from edgesched.sched.health import Health
from edgesched.sched.lifecycle import Buffers, Lifecycle, Outcome, Submission
from edgesched.types import Completion, Launch, Plan, Timings
from tests.fakes import model_info


def lifecycle(num_slices: int = 1, streams: int = 2, **kw) -> Lifecycle:
    models = {"m": model_info("m", num_slices)}
    return Lifecycle(models, streams, queue_depth=kw.pop("queue_depth", 8), **kw)


def admit(life: Lifecycle, at_s: float = 0.0, deadline_s: float | None = None):
    update = life.intake([Submission("m", {"x": "tensor"}, at_s, deadline_s, reply_to="tag")],
                         at_s)
    (request, inputs), = update.staged
    assert inputs == {"x": "tensor"} and request.reply_to == "tag"
    return request


def launch(life: Lifecycle, request, index: int, stream: int, at_s: float) -> Launch:
    one = Launch(request.id, "m", index, stream)
    update = life.launched(Plan((one,)), at_s)
    assert update.launches == [one] and not update.answers
    return one


def test_a_two_slice_request_is_requeued_then_done_with_timings():
    life = lifecycle(num_slices=2)
    request = admit(life, at_s=1.0)
    first = launch(life, request, 0, 0, at_s=1.25)
    update = life.update([Completion(first, 1.25, 1.5)], 1.5)
    assert not update.answers and life.state.waiting_for("m") == [request]   # requeued
    second = launch(life, request, 1, 1, at_s=2.0)
    (answer,) = life.update([Completion(second, 2.0, 2.5)], 2.5).answers
    assert answer.outcome is Outcome.COMPLETED and answer.buffers is Buffers.FETCH
    assert answer.timings == Timings(queue_ms=250.0, device_ms=750.0, total_ms=1500.0)
    assert len(life.state) == 0


def test_a_full_queue_refuses_without_staging():
    life = lifecycle(queue_depth=1)
    admit(life)
    update = life.intake([Submission("m", {}, 0.0)], 0.0)
    (answer,) = update.answers
    assert not update.staged
    assert answer.outcome is Outcome.REJECTED and answer.buffers is Buffers.NONE
    assert isinstance(answer.error, Overloaded)


def test_a_deadline_already_past_is_expired_at_admission():
    (answer,) = lifecycle().intake([Submission("m", {}, 1.0, deadline_s=1.0)], 1.0).answers
    assert answer.outcome is Outcome.EXPIRED and isinstance(answer.error, DeadlineExceeded)


def test_a_waiting_request_expires_at_its_deadline_and_its_buffers_are_released():
    life = lifecycle()
    admit(life, 0.0, deadline_s=0.5)
    assert not life.intake([], 0.25).answers
    assert life.wait_s(0.25, 10.0) == pytest.approx(0.25)     # sleep no longer than that
    (answer,) = life.intake([], 0.5).answers
    assert answer.outcome is Outcome.EXPIRED and answer.buffers is Buffers.RELEASE


def test_a_last_slice_ending_after_the_deadline_is_late():
    life = lifecycle()
    request = admit(life, 0.0, deadline_s=1.0)
    one = launch(life, request, 0, 0, 0.0)
    (answer,) = life.update([Completion(one, 0.0, 1.25)], 1.25).answers
    assert answer.outcome is Outcome.EXPIRED and "while running" in str(answer.error)


def test_failed_launches_make_the_model_unhealthy_and_refuse_the_waiting():
    life = lifecycle(streams=1, health=Health(["m"], unhealthy_after=1, retry_s=5.0))
    running, waiting = admit(life), admit(life)
    one = launch(life, running, 0, 0, 0.0)
    update = life.update([Completion(one, 0.0, 0.1, "RuntimeError: boom")], 0.1)
    failed, refused = update.answers
    assert failed.request is running and isinstance(failed.error, ServerError)
    assert refused.request is waiting and isinstance(refused.error, ModelUnavailable)
    assert [level for level, _ in update.notices] == ["error"]
    (answer,) = life.intake([Submission("m", {}, 0.2)], 0.2).answers   # before the retry
    assert isinstance(answer.error, ModelUnavailable) and answer.buffers is Buffers.NONE


def test_a_launch_past_its_timeout_is_answered_its_stream_held_until_it_ends():
    life = lifecycle(streams=1, launch_timeout_s=1.0)
    request, other = admit(life), admit(life)
    one = launch(life, request, 0, 0, 0.0)
    update = life.update([], 1.0)
    timed_out, refused_waiting = update.answers
    assert timed_out.buffers is Buffers.HELD and isinstance(timed_out.error, ServerError)
    assert isinstance(refused_waiting.error, ModelUnavailable)        # a hang: unhealthy at once
    assert life.state.stuck == {0: one} and life.state.free_streams() == []
    # The hung launch ends at last: its stream is free again and its buffers are released.
    late = life.update([Completion(one, 0.0, 3.0)], 3.0)
    assert late.freed == [request.id] and life.state.free_streams() == [0]
    assert other.id not in life.state.requests


def test_early_rejects_of_a_plan_are_answered_and_released():
    life = lifecycle()
    request = admit(life, 0.0, deadline_s=5.0)
    (answer,) = life.launched(Plan(rejects=(request.id,)), 0.0).answers
    assert answer.outcome is Outcome.EXPIRED and answer.buffers is Buffers.RELEASE


def test_queue_depths_follow_every_admission_and_answer_in_order():
    life = lifecycle()
    update = life.intake([Submission("m", {}, 0.0), Submission("m", {}, 0.0)], 0.0)
    assert update.depths == [("m", 1), ("m", 2)]


def test_abort_all_answers_queued_running_and_arriving_requests():
    life = lifecycle()
    running = admit(life)
    launch(life, running, 0, 0, 0.0)
    update = life.abort_all([Submission("m", {}, 0.1)], ServerError("stop"), 0.1)
    assert sorted(a.request.id for a in update.answers) == [1, 2]
    assert all(a.outcome is Outcome.FAILED for a in update.answers)
    assert len(life.state) == 0


def test_inputs_the_backend_refuses_are_invalid_and_leave_the_model_healthy():
    life = lifecycle()
    request = admit(life)
    (answer,) = life.refused(request, InvalidInput("shape outside the profile")).answers
    assert answer.outcome is Outcome.INVALID and answer.buffers is Buffers.RELEASE
    assert len(life.state) == 0 and life.health.snapshot()["m"]["healthy"]


# --- the breaker judges the model, not the client ---------------------------------------------

class Shaped:
    def __init__(self, *shape: int):
        self.shape = shape


def admit_shaped(life: Lifecycle, *shape: int):
    (request, _), = life.intake([Submission("m", {"x": Shaped(*shape)}, 0.0)], 0.0).staged
    return request


def run_once(life: Lifecycle, request, error: str | None = None, rejected: bool = False):
    one = launch(life, request, 0, 0, 0.0)
    (answer, *rest) = life.update([Completion(one, 0.0, 0.1, error, rejected=rejected)],
                                  0.1).answers
    return answer


def test_a_runtime_rejection_on_never_run_shapes_is_invalid_input_and_not_counted():
    life = lifecycle(streams=1, health=Health(["m"], unhealthy_after=3, retry_s=5.0))
    assert run_once(life, admit_shaped(life, 2, 2)).outcome is Outcome.COMPLETED
    for _ in range(50):                                      # one client's bad shapes
        answer = run_once(life, admit_shaped(life, 3), "RuntimeException: Reshape",
                          rejected=True)
        assert answer.outcome is Outcome.INVALID and type(answer.error) is InvalidInput
        assert "never run" in str(answer.error) and "\n" not in str(answer.error)
    snap = life.health.snapshot()["m"]
    assert snap["healthy"] and snap["consecutive_failures"] == 0 and snap["rejections"] == 50
    assert run_once(life, admit_shaped(life, 2, 2)).outcome is Outcome.COMPLETED
    assert not life._shapes                                  # nothing left per request


def test_a_rejection_on_shapes_that_worked_before_counts_toward_unhealthy():
    life = lifecycle(streams=1, health=Health(["m"], unhealthy_after=2, retry_s=5.0))
    run_once(life, admit_shaped(life, 2, 2))
    for _ in range(2):
        answer = run_once(life, admit_shaped(life, 2, 2), "RuntimeException: x", rejected=True)
        assert answer.outcome is Outcome.FAILED and isinstance(answer.error, ServerError)
    assert not life.health.snapshot()["m"]["healthy"]


def test_device_faults_count_whatever_the_shapes():
    life = lifecycle(streams=1, health=Health(["m"], unhealthy_after=2, retry_s=5.0))
    for _ in range(2):
        answer = run_once(life, admit_shaped(life, 7), "CUDA error: illegal address")
        assert answer.outcome is Outcome.FAILED
    assert not life.health.snapshot()["m"]["healthy"]


def test_proven_signatures_are_bounded_oldest_forgotten_first():
    from edgesched.sched import health as health_module
    h = Health(["m"], unhealthy_after=3, retry_s=5.0)
    for n in range(health_module.MAX_PROVEN + 5):
        h.worked("m", (("x", (n,)),))
    assert h.blames_inputs("m", (("x", (0,)),))               # forgotten
    assert not h.blames_inputs("m", (("x", (health_module.MAX_PROVEN + 4,)),))
    assert health_module.signature({"b": Shaped(1), "a": Shaped(2, 3)}) == \
        (("a", (2, 3)), ("b", (1,)))
