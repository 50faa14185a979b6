"""The lifecycle's fast paths (sched/lifecycle.py) give what its general paths give: a step in
which nothing happened returns the shared NOTHING, a plan of lone launches skips the batch and
timeout bookkeeping, a completed request's health is judged in one call. Pure: no backend."""
from __future__ import annotations

import pytest

from edgesched.sched.batch_units import Batches
from edgesched.sched.health import Health
from edgesched.sched.lifecycle import Lifecycle, Submission
from edgesched.sched.updates import NOTHING, Outcome, Update, make_timings
from edgesched.types import (
    BatchConfig,
    Completion,
    Launch,
    ModelInfo,
    Plan,
    Priority,
    TensorSpec,
    Timings,
)
from tests.fakes import model_info


def lifecycle(num_slices: int = 2, streams: int = 2, **kw) -> Lifecycle:
    return Lifecycle({"m": model_info("m", num_slices)}, streams, queue_depth=8, **kw)


def admitted(life: Lifecycle, count: int, at_s: float = 0.0, deadline_s: float | None = None):
    update = life.intake([Submission("m", {}, at_s, deadline_s) for _ in range(count)], at_s)
    return [request for request, _ in update.staged]


def test_a_step_with_nothing_arrived_due_or_done_returns_nothing():
    life = lifecycle()
    admitted(life, 1)
    assert life.intake([], 1.0) is NOTHING and life.intake((), 1.0) is NOTHING
    assert life.update([], 1.0) is NOTHING
    assert len(life.state) == 1 and life.state.has_ready      # nothing changed
    with pytest.raises(AttributeError):
        NOTHING.answers.append(None)                    # shared: no one can add to it


def test_a_passed_deadline_still_expires_without_submissions():
    life = lifecycle()
    (request,) = admitted(life, 1, deadline_s=0.5)
    assert life.intake([], 0.25) is NOTHING                 # not due yet
    (answer,) = life.intake([], 0.5).answers
    assert answer.request is request and answer.outcome is Outcome.EXPIRED


def test_a_launch_timeout_still_fires_without_completions():
    life = lifecycle(launch_timeout_s=1.0)
    (request,) = admitted(life, 1)
    life.launched(Plan((Launch(request.id, "m", 0, 0),)), 0.0)
    assert life.update([], 0.5) is NOTHING                   # not due yet
    (answer,) = life.update([], 1.0).answers
    assert answer.request is request and answer.outcome is Outcome.FAILED


def _launch_all(life: Lifecycle) -> tuple[Update, dict]:
    requests = admitted(life, 3)
    plan = Plan(tuple(Launch(r.id, "m", 0, s) for r, s in zip(requests, (0, 1))))
    return life.launched(plan, 0.5), dict(life.state.running)


def test_lone_launches_take_the_fast_path_with_the_general_paths_outcome():
    fast, general = lifecycle(), lifecycle()
    general.batches.active = True       # a hint that may be True spuriously: the general path
    (fast_update, fast_running), (general_update, general_running) = (
        _launch_all(fast), _launch_all(general))
    assert fast_update.launches == general_update.launches == list(fast_running.values())
    assert fast_running == general_running
    assert fast.state.free_streams() == general.state.free_streams() == []
    assert [r.first_launch_s for r in fast.state.requests.values()] == \
        [r.first_launch_s for r in general.state.requests.values()] == [0.5, 0.5, None]


def test_a_completion_is_answered_alike_after_either_launch_path():
    answers = []
    for life in (lifecycle(num_slices=1), lifecycle(num_slices=1)):
        if answers:
            life.batches.active = True
        update, _ = _launch_all(life)
        done = life.update([Completion(launch, 0.5, 0.75) for launch in update.launches], 0.75)
        answers.append([(a.request.id, a.outcome, a.buffers, a.timings) for a in done.answers])
        assert done.depths == [("m", 2), ("m", 1)]
    assert answers[0] == answers[1] and len(answers[0]) == 2


def test_timings_are_made_as_the_dataclass_makes_them():
    made = make_timings(0.25, 1.5, 2.0)
    assert type(made) is Timings and made == Timings(0.25, 1.5, 2.0)
    assert hash(made) == hash(Timings(0.25, 1.5, 2.0)) and repr(made) == repr(Timings(0.25, 1.5,
                                                                                       2.0))
    with pytest.raises(AttributeError):
        made.total_ms = 3.0                           # still frozen


@pytest.mark.parametrize("failures", [0, 1, 3])
@pytest.mark.parametrize("shapes", [None, (), (("x", (1,)),)])
def test_health_completed_is_worked_then_succeeded(failures, shapes):
    one, two = Health(["m"], unhealthy_after=3, retry_s=1.0), Health(["m"], 3, 1.0)
    for health in (one, two):
        for _ in range(failures):
            health.failed("m", "boom", 0.0)
    for _ in range(2):            # the second time, the shapes are proven
        two.worked("m", shapes)
        assert one.completed("m", shapes) is two.succeeded("m")
        assert one.snapshot() == two.snapshot() and one.blames_inputs("m", ("other",))
        assert one.blames_inputs("m", shapes) is two.blames_inputs("m", shapes)


def test_batches_are_active_while_some_model_batches():
    batched = ModelInfo("b", (TensorSpec("image", "float32", (None, 3)),),
                        (TensorSpec("logits", "float32", (None, 10)),), 1, 30.0,
                        Priority.REALTIME, 1, batch=BatchConfig(4, 0.0))
    batches = Batches()
    batches.set_models({"m": model_info("m")})
    assert not batches.active
    batches.set_models({"m": model_info("m"), "b": batched})
    assert batches.active and batches.limit("b") == 4
    batches.turn_off("b")
    assert not batches.active and batches.limit("b") == 0


def test_start_alone_starts_a_plain_plan_as_launched_would():
    one, two = lifecycle(), lifecycle()
    for life in (one, two):
        admitted(life, 2)
    plan = Plan((Launch(1, "m", 0, 0), Launch(2, "m", 0, 1)))
    assert one.start_alone(plan, 0.5)
    assert two.launched(plan, 0.5).launches == list(plan.launches)
    for life in (one, two):
        assert dict(life.state.running) == {1: plan.launches[0], 2: plan.launches[1]}
        assert life.state.requests[1].first_launch_s == 0.5 and not life.state.has_ready


@pytest.mark.parametrize("kind", ["rejects", "timeout"])
def test_start_alone_leaves_any_other_plan_to_launched(kind):
    life = lifecycle(launch_timeout_s=1.0 if kind == "timeout" else None)
    admitted(life, 2)
    plan = Plan((Launch(1, "m", 0, 0),), (2,) if kind == "rejects" else ())
    assert not life.start_alone(plan, 0.0)
    assert not life.state.running and len(life.state) == 2        # nothing done


def test_make_launch_and_make_plan_are_the_constructors_values():
    from edgesched.types import make_launch, make_plan
    launch = make_launch(7, "m", 1, 2)
    assert launch == Launch(7, "m", 1, 2) and hash(launch) == hash(Launch(7, "m", 1, 2))
    assert repr(launch) == repr(Launch(7, "m", 1, 2))
    assert make_plan((launch,)) == Plan((launch,)) and make_plan((), (3,)) == Plan((), (3,))
    with pytest.raises(AttributeError):
        launch.stream = 0                             # still frozen
