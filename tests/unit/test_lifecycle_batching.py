"""Batches in the request lifecycle as data (sched/lifecycle.py, sched/batch_units.py): waiting
requests of one model join a launched one as a unit, run as one, and are answered each with
its own rows and times; no backend, no engine."""
from __future__ import annotations

import numpy as np
import pytest

from edgesched.errors import DeadlineExceeded, InvalidInput
from edgesched.sched.batching import BatchLatency
from edgesched.sched.lifecycle import Buffers, Lifecycle, Outcome, Submission
from edgesched.types import (
    BatchConfig,
    Completion,
    Launch,
    ModelInfo,
    Plan,
    Priority,
    TensorSpec,
)

IMAGE = TensorSpec("image", "float32", (None, 3, 4, 4))
LOGITS = TensorSpec("logits", "float32", (None, 10))
MS = 1e-3


def lifecycle(num_slices=2, max_size=4, wait_ms=0.0, per_row_s=1 * MS, slo_ms=30.0):
    model = ModelInfo("m", (IMAGE,), (LOGITS,), num_slices, slo_ms, Priority.REALTIME, 1,
                      batch=BatchConfig(max_size, wait_ms))
    latency = BatchLatency({"m": {1: per_row_s, 4: 4 * per_row_s}})
    return Lifecycle({"m": model}, 2, queue_depth=16, batch_latency=latency)


def image(rows=1, size=4, value=0.0):
    return {"image": np.full((rows, 3, size, size), value, np.float32)}


def admit(life, at_s, inputs=None, deadline_s=None):
    update = life.intake([Submission("m", inputs if inputs is not None else image(),
                                     at_s, deadline_s)], at_s)
    (request, _), = update.staged
    return request


def run_unit(life, head, at_s, num_slices=2, device_s=1 * MS):
    """Launch and complete every slice of `head` (a unit, or alone) on stream 0."""
    updates = []
    for index in range(num_slices):
        one = Launch(head.id, "m", index, 0)
        updates.append(life.launched(Plan((one,)), at_s))
        at_s += device_s
        updates.append(life.update([Completion(one, at_s - device_s, at_s)], at_s))
    return updates


def test_waiting_requests_join_the_launched_one_and_each_gets_its_rows_and_times():
    life = lifecycle()
    a, b = admit(life, 0.0, image(value=1)), admit(life, 0.002, image(2, value=2))
    c = admit(life, 0.003, image(value=3))
    first = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.004)
    (head, inputs, others), = first.batches
    assert head is a and others == (b.id, c.id)
    assert inputs["image"].shape == (4, 3, 4, 4)
    assert inputs["image"][:, 0, 0, 0].tolist() == [1, 2, 2, 3]      # member order, rows
    assert not life.state.has_ready              # b and c left their queue, a runs
    assert life.state.pending("m") == 3          # ... yet all three are still pending
    one = Launch(a.id, "m", 0, 0)
    life.update([Completion(one, 0.004, 0.008)], 0.008)
    second = Launch(a.id, "m", 1, 1)
    life.launched(Plan((second,)), 0.008)
    answers = life.update([Completion(second, 0.008, 0.010)], 0.010).answers
    assert [x.request for x in answers] == [a, b, c]
    assert all(x.outcome is Outcome.COMPLETED and x.buffers is Buffers.FETCH for x in answers)
    assert [x.part for x in answers] == [(a.id, 0, 1, 4), (a.id, 1, 3, 4), (a.id, 3, 4, 4)]
    # own arrival, the batch's launch (4 ms) and end (10 ms), the batch's device time (6 ms)
    assert [round(x.timings.queue_ms, 6) for x in answers] == [4.0, 2.0, 1.0]
    assert [round(x.timings.total_ms, 6) for x in answers] == [10.0, 8.0, 7.0]
    assert {round(x.timings.device_ms, 6) for x in answers} == {6.0}
    assert len(life.state) == 0 and life.state.pending("m") == 0


def test_mixed_shapes_never_batch_together():
    life = lifecycle()
    a = admit(life, 0.0, image(size=4))
    admit(life, 0.001, {"image": np.zeros((1, 3, 8, 8), np.float32)})
    admit(life, 0.001, {"image": np.zeros((1, 3, 4, 4), np.float64)})
    update = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.002)
    assert not update.batches and len(update.launches) == 1
    assert len(life.state.waiting_for("m")) == 2


def test_a_batch_is_only_as_big_as_every_members_objective_allows():
    # 10 ms per row, objective 30 ms: from 5 ms on, 2 rows end at 25 ms, 3 would end at 35
    life = lifecycle(per_row_s=10 * MS, slo_ms=30.0)
    a, b, c = (admit(life, t) for t in (0.0, 0.001, 0.002))
    (head, inputs, others), = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.005).batches
    assert others == (b.id,) and inputs["image"].shape[0] == 2
    assert life.state.waiting_for("m") == [c]


def test_the_limit_caps_the_rows():
    life = lifecycle(max_size=2)
    a = admit(life, 0.0)
    admit(life, 0.0)
    admit(life, 0.0)
    (_, inputs, others), = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0).batches
    assert len(others) == 1 and inputs["image"].shape[0] == 2


def test_a_lone_request_is_never_delayed_unless_wait_ms_allows_it():
    life = lifecycle()
    a = admit(life, 0.0)
    update = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.001)
    assert len(update.launches) == 1 and not update.batches        # no wait_ms: runs now

    life = lifecycle(wait_ms=5.0)
    a = admit(life, 0.0)
    held = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.001)
    assert not held.launches and life.wait_s(0.001, 1.0) == pytest.approx(0.004)  # its end
    assert not life.state.has_ready        # out of its queue: policies plan other work
    b = admit(life, 0.002)
    assert not life.launched(Plan((Launch(b.id, "m", 0, 0),)), 0.002).launches  # 2 of 4
    life.intake([], 0.005)                 # the wait is over: both wait in the queue again
    assert life.state.waiting_for("m") == [a, b]
    (head, _, others), = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.005).batches
    assert head is a and others == (b.id,)

    life = lifecycle(wait_ms=5.0)          # company comes: a full batch launches at once
    a = admit(life, 0.0)
    life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0)
    b, c, d = (admit(life, 0.001) for _ in range(3))
    (head, _, others), = life.launched(Plan((Launch(b.id, "m", 0, 0),)), 0.001).batches
    assert head is b and set(others) == {a.id, c.id, d.id} and not life.batches.holds

    life = lifecycle(wait_ms=5.0, slo_ms=5.5)     # 5 ms wait + 2 ms for two rows > 5.5 ms
    a = admit(life, 0.0)
    assert len(life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.001).launches) == 1


def test_a_member_launched_in_the_same_plan_is_not_launched_twice():
    life = lifecycle()
    a, b = admit(life, 0.0), admit(life, 0.001)
    update = life.launched(Plan((Launch(a.id, "m", 0, 0), Launch(b.id, "m", 0, 1))), 0.002)
    assert [x.request_id for x in update.launches] == [a.id]
    assert update.batches[0][2] == (b.id,)


def test_a_batch_shares_its_earliest_members_deadline_and_expires_as_one():
    life = lifecycle(num_slices=2)
    a = admit(life, 0.0, deadline_s=0.050)
    b = admit(life, 0.001, deadline_s=0.008)
    life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.002)
    assert a.deadline_s == 0.008
    one = Launch(a.id, "m", 0, 0)
    life.update([Completion(one, 0.002, 0.004)], 0.004)      # waits for its second slice
    answers = life.intake([], 0.009).answers
    assert [x.request for x in answers] == [a, b]
    assert all(x.outcome is Outcome.EXPIRED and isinstance(x.error, DeadlineExceeded)
               for x in answers)
    assert answers[0].buffers is Buffers.RELEASE and answers[1].buffers is Buffers.NONE
    assert len(life.state) == 0


def test_a_failed_batch_fails_each_member_once_and_turns_batching_off():
    life = lifecycle(num_slices=1)
    a, b = admit(life, 0.0), admit(life, 0.0)
    one = Launch(a.id, "m", 0, 0)
    assert life.launched(Plan((one,)), 0.0).batches
    answers = life.update([Completion(one, 0.0, 0.001, "boom", rejected=True)], 0.001).answers
    assert [x.request for x in answers] == [a, b]
    assert all(x.outcome is Outcome.FAILED and "batching is off" in str(x.error)
               for x in answers)
    assert life.health.snapshot()["m"]["healthy"]
    c = admit(life, 0.002)
    admit(life, 0.002)
    assert not life.launched(Plan((Launch(c.id, "m", 0, 0),)), 0.002).batches


def test_a_batch_the_backend_refuses_to_stage_runs_its_head_alone():
    life = lifecycle(num_slices=1)
    a, b = admit(life, 0.0, image(value=1)), admit(life, 0.0, image(value=2))
    assert life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0).batches
    alone, warning = life.unbatch(a, InvalidInput("outside the engine's profile"))
    assert alone["image"][0, 0, 0, 0] == 1 and "batching is off" in warning
    assert life.state.waiting_for("m") == [b]
    (answer,) = life.update([Completion(Launch(a.id, "m", 0, 0), 0.0, 0.001)], 0.001).answers
    assert answer.request is a and answer.part is None


def test_a_held_request_still_expires_and_aborts():
    life = lifecycle(wait_ms=5.0, slo_ms=100.0)
    a = admit(life, 0.0, deadline_s=0.008)     # 5 ms wait + 2 ms for two rows: it fits
    assert not life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0).launches
    (answer,) = life.intake([], 0.009).answers      # (no policy launched it after the wait)
    assert answer.request is a and answer.outcome is Outcome.EXPIRED
    assert not life.batches.holds and len(life.state) == 0
    b = admit(life, 0.01)
    life.launched(Plan((Launch(b.id, "m", 0, 0),)), 0.01)
    (answer,) = life.abort_all([], InvalidInput("stop"), 0.011).answers
    assert answer.request is b and not life.batches.holds


def test_abort_answers_every_member_once():
    life = lifecycle()
    a, b = admit(life, 0.0), admit(life, 0.0)
    life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0)
    answers = life.abort_all([], InvalidInput("stop"), 0.001).answers
    assert sorted(x.request.id for x in answers) == sorted([a.id, b.id])
    assert len(life.state) == 0


def test_synthetic_requests_batch_at_the_models_rows():
    life = lifecycle()
    a = admit(life, 0.0, {})
    admit(life, 0.0, {})
    (_, inputs, _), = life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0).batches
    assert inputs["image"].shape == (2, 3, 4, 4)


def test_a_held_request_never_joins_another_models_batch():
    """Two models alike in every input (as two camera detectors are): a request of `n` held
    for company stays out of a batch of `m`, whose outputs are not its own."""
    models = {name: ModelInfo(name, (IMAGE,), (LOGITS,), 2, 30.0, Priority.REALTIME, 1,
                              batch=BatchConfig(4, 5.0)) for name in ("m", "n")}
    latency = BatchLatency({name: {1: MS, 4: 4 * MS} for name in models})
    life = Lifecycle(models, 2, queue_depth=16, batch_latency=latency)
    (held, _), = life.intake([Submission("n", image(), 0.0)], 0.0).staged
    assert not life.launched(Plan((Launch(held.id, "n", 0, 0),)), 0.0).launches   # held
    (head, _), = life.intake([Submission("m", image(3), 0.001)], 0.001).staged
    update = life.launched(Plan((Launch(head.id, "m", 0, 0),)), 0.001)
    assert [(h.id, others) for h, _, others in update.batches] in ([], [(head.id, ())])
    assert held.id in life.batches.holds                   # still waiting for its own kind


def test_requests_held_for_company_fail_with_the_waiting_ones():
    """A model turning unhealthy fails its waiting requests; those held for company are
    waiting too (out of their queue), so they fail with them rather than launch later."""
    from edgesched.errors import ModelUnavailable
    from edgesched.sched.updates import Update
    life = lifecycle(wait_ms=5.0)
    a = admit(life, 0.0)
    assert not life.launched(Plan((Launch(a.id, "m", 0, 0),)), 0.0).launches     # held
    out = Update()
    life._fail_waiting(out, "m", ModelUnavailable("model 'm' is unhealthy"))
    assert [x.request for x in out.answers] == [a] and not life.batches.holds
    assert life.state.pending("m") == 0
