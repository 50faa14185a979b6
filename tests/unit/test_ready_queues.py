"""Ready queues (sched/state.py): their orders, their key parts, and an emptied queue reused."""
from __future__ import annotations

from edgesched.sched import Request, SchedState
from edgesched.types import Launch, ModelInfo, Priority, TensorSpec

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
SPEC = TensorSpec("x", "float32", (1,))


def state_of(**models: Priority) -> SchedState:
    return SchedState({m: ModelInfo(m, (SPEC,), (SPEC,), 2, 100.0, p, 2)
                       for m, p in models.items()}, 4)


def test_each_queue_carries_its_key_parts():
    state = state_of(cam=RT, bulk=BE)
    state.admit(Request(1, "cam", RT, 0.0, 0.1, 2))
    state.admit(Request(2, "bulk", BE, 0.0, 0.5, 2, next_slice=1))
    got = {(q.key, q.model, q.index, q.realtime, q.slice_key) for q in state.ready_queues()}
    assert got == {(("cam", 0, True), "cam", 0, True, ("cam", 0)),
                   (("bulk", 1, False), "bulk", 1, False, ("bulk", 1))}


def test_urgency_is_the_earlier_of_the_objective_and_the_client_deadline():
    state = state_of(cam=RT)
    state.admit(Request(1, "cam", RT, 0.0, 0.5, 2))                      # objective 0.5
    state.admit(Request(2, "cam", RT, 0.125, 0.5, 2, deadline_s=0.25))   # deadline 0.25
    state.admit(Request(3, "cam", RT, 0.25, 0.5, 2, deadline_s=2.0))     # objective 0.75
    (queue,) = state.ready_queues()
    assert [(e[0], e[1]) for e in queue.by_urgency] == [(0.25, 2), (0.5, 1), (0.75, 3)]
    assert [e[1] for e in queue.by_arrival] == [1, 2, 3]
    assert [e[1] for e in queue.by_deadline] == [2, 3]


def test_an_emptied_queue_leaves_the_ready_set_and_is_reused_in_order():
    state = state_of(cam=RT)
    state.admit(Request(1, "cam", RT, 0.0, 0.1, 2))
    (queue,) = state.ready_queues()
    state.start(Launch(1, "cam", 0, 0), 0.0)
    assert list(state.ready_queues()) == [] and not state.has_ready
    state.admit(Request(3, "cam", RT, 0.03, 0.1, 2))
    state.admit(Request(2, "cam", RT, 0.02, 0.1, 2))        # arrived earlier, admitted later
    (again,) = state.ready_queues()
    assert again is queue
    assert [e[1] for e in again.by_arrival] == [2, 3]
    assert [e[1] for e in again.by_urgency] == [2, 3]
    state.retire(state.requests[2])                          # not the head of a launch
    assert [e[1] for e in again.by_arrival] == [3]
    assert [r.id for r in state.waiting_for("cam")] == [3]


def test_removing_a_request_from_the_middle_of_a_queue_keeps_the_others():
    state = state_of(bulk=BE)
    for rid in range(1, 6):
        state.admit(Request(rid, "bulk", BE, rid * 0.01, 0.5, 2))
    state.retire(state.requests[3])
    (queue,) = state.ready_queues()
    assert [e[1] for e in queue.by_arrival] == [1, 2, 4, 5]
    assert [e[1] for e in queue.by_urgency] == [1, 2, 4, 5]
    state.start(Launch(1, "bulk", 0, 1), 0.1)
    assert [e[1] for e in queue.by_arrival] == [2, 4, 5]


def test_free_streams_and_only_high_priority_usable():
    state = state_of(cam=RT)
    assert state.free_streams() == [0, 1, 2, 3]
    assert not state.only_high_priority_usable()
    state.admit(Request(1, "cam", RT, 0.0, 0.1, 2))
    state.start(Launch(1, "cam", 0, 2), 0.0)
    assert state.free_streams() == [0, 1, 3]
    one = SchedState(state.models, 1)
    assert one.only_high_priority_usable()
    for s in (1, 3):     # every normal stream held by a hung launch
        state.stuck[s] = Launch(100 + s, "cam", 1, s)
    state.stuck[2] = state.running[1]
    assert state.only_high_priority_usable()


def test_admit_and_retire_return_the_models_pending_count():
    state = state_of(cam=RT, bulk=BE)
    assert state.admit(Request(1, "cam", RT, 0.0, 0.1, 2)) == 1
    assert state.admit(Request(2, "cam", RT, 0.01, 0.1, 2)) == 2
    assert state.admit(Request(3, "bulk", BE, 0.02, 0.1, 2)) == 1
    assert state.retire(state.requests[2]) == 1 == state.pending("cam")    # still queued
    # A request past its last slice waits in no queue: retired without a queue look-up.
    done = state.requests[1]
    for index, stream in ((0, 0), (1, 0)):
        launch = Launch(1, "cam", index, stream)
        state.start(launch, 0.0)
        state.finish(launch, 0.001)
        if index == 0:
            state.requeue(done)
    assert done.next_slice == done.num_slices and state.retire(done) == 0
    assert 1 not in state.requests and state.pending("cam") == 0
    assert [q.key for q in state.ready_queues()] == [("bulk", 0, False)]
