"""Policies are data in, data out: state built by hand, the exact Plan asserted."""
from __future__ import annotations

import dataclasses

import pytest

from edgesched.errors import ConfigError
from edgesched.sched import POLICIES, Request, SchedState, make_policy
from edgesched.sched.policies import Fifo, Greedy, PriorityStreams
from edgesched.types import Launch, ModelInfo, Plan, Priority, TensorSpec

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
SPEC = TensorSpec("x", "float32", (1,))


def info(name: str, slices: int = 1, *, priority: Priority = BE, slo_ms: float = 100.0,
         instances: int = 1) -> ModelInfo:
    return ModelInfo(name, (SPEC,), (SPEC,), slices, slo_ms, priority, instances)


def make_state(*models: ModelInfo, streams: int = 4) -> SchedState:
    return SchedState({m.name: m for m in models}, streams)


def admit(state: SchedState, rid: int, model: str, arrival_s: float, *,
          priority: Priority | None = None, deadline_s: float | None = None) -> Request:
    m = state.models[model]
    request = Request(rid, model, priority or m.priority, arrival_s, m.slo_ms / 1e3,
                      m.num_slices, deadline_s)
    state.admit(request)
    return request


def start(state: SchedState, rid: int, stream: int, now_s: float = 0.0) -> Launch:
    request = state.requests[rid]
    launch = Launch(rid, request.model, request.next_slice, stream)
    state.start(launch, now_s)
    return launch


def L(rid: int, model: str, slice_index: int, stream: int) -> Launch:
    return Launch(rid, model, slice_index, stream)


def snapshot(state: SchedState) -> tuple:
    """Everything a policy could change, as plain values."""
    return (
        {rid: dataclasses.asdict(r) for rid, r in state.requests.items()},
        dict(state.running),
        {k: [e[1] for e in q.by_arrival] for k, q in state._queues.items()},
        set(state._busy_streams), dict(state._slice_load), dict(state._pending),
        state.num_streams, state.high_priority_streams,
    )


def plan(policy, state: SchedState, now_s: float = 1.0) -> Plan:
    before = snapshot(state)
    result = policy.plan(state, now_s)
    assert snapshot(state) == before, f"{policy.name} changed the state"
    assert isinstance(result, Plan) and isinstance(result.launches, tuple)
    return result


def valid(state: SchedState, p: Plan) -> None:
    """Plans every policy must respect: free streams, one launch per request and stream."""
    streams = [launch.stream for launch in p.launches]
    assert len(set(streams)) == len(streams)
    assert set(streams) <= set(state.free_streams())
    rids = [launch.request_id for launch in p.launches]
    assert len(set(rids)) == len(rids)
    for launch in p.launches:
        request = state.requests[launch.request_id]
        assert launch.request_id not in state.running
        assert (launch.model, launch.slice_index) == (request.model, request.next_slice)


ALL = [Fifo(), Greedy(), PriorityStreams()]


# --- every policy -------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_empty_state_gives_an_empty_plan(policy):
    assert plan(policy, make_state(info("a"))) == Plan()


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_no_free_stream_gives_an_empty_plan(policy):
    state = make_state(info("a", instances=4), streams=2)
    for rid in (1, 2, 3):
        admit(state, rid, "a", rid * 0.1, priority=RT)
    start(state, 1, 0)
    start(state, 2, 1)
    assert plan(policy, state) == Plan()


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_multi_slice_request_continues_slice_by_slice(policy):
    state = make_state(info("m", 3, priority=RT), streams=2)
    admit(state, 7, "m", 0.0)
    seen = []
    now = 0.0
    for expected in range(3):
        p = plan(policy, state, now)
        valid(state, p)
        assert len(p.launches) == 1
        (launch,) = p.launches
        assert (launch.request_id, launch.slice_index) == (7, expected)
        seen.append(launch.slice_index)
        state.start(launch, now)
        # While its slice runs the request is not waiting: nothing else to plan.
        assert plan(policy, state, now) == Plan()
        now += 0.01
        request = state.finish(launch, 0.01)
        if request.next_slice < request.num_slices:
            state.requeue(request)
    assert seen == [0, 1, 2]
    assert plan(policy, state, now) == Plan()
    state.retire(state.requests[7])
    assert len(state) == 0 and state.pending("m") == 0


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_requeued_request_keeps_its_place_by_arrival(policy):
    # Request 1 (older) ran slice 0; it must go before request 2 that arrived later.
    state = make_state(info("m", 2, priority=RT, instances=4), streams=1)
    admit(state, 1, "m", 0.0)
    admit(state, 2, "m", 0.5)
    launch = start(state, 1, 0)
    state.requeue(state.finish(launch, 0.1))
    assert plan(policy, state).launches == (L(1, "m", 1, 0),)


# --- fifo ---------------------------------------------------------------------------------

def test_fifo_picks_the_oldest_request_across_models():
    state = make_state(info("b"), info("a"), streams=4)
    admit(state, 1, "b", 0.3)
    admit(state, 2, "a", 0.1)   # oldest, but its model comes second in the models dict
    admit(state, 3, "a", 0.2)
    assert plan(Fifo(), state).launches == (L(2, "a", 0, 0),)


def test_fifo_breaks_arrival_ties_by_id():
    state = make_state(info("a", instances=2), info("b"), streams=4)
    admit(state, 5, "b", 0.1)
    admit(state, 4, "a", 0.1)
    assert plan(Fifo(), state).launches == (L(4, "a", 0, 0),)


def test_fifo_launches_nothing_while_anything_runs():
    state = make_state(info("a"), info("b"), streams=4)
    admit(state, 1, "a", 0.0)
    admit(state, 2, "b", 0.1)
    start(state, 1, 2)
    assert plan(Fifo(), state) == Plan()


def test_fifo_uses_the_first_free_stream():
    state = make_state(info("a"), streams=3)
    admit(state, 1, "a", 0.0)
    assert plan(Fifo(), state).launches == (L(1, "a", 0, 0),)


# --- greedy -------------------------------------------------------------------------------

def test_greedy_fills_every_free_stream_oldest_first():
    state = make_state(info("a", instances=4), info("b", instances=4), streams=3)
    admit(state, 1, "a", 0.4)
    admit(state, 2, "b", 0.1)
    admit(state, 3, "a", 0.2)
    admit(state, 4, "b", 0.3)
    assert plan(Greedy(), state).launches == (
        L(2, "b", 0, 0), L(3, "a", 0, 1), L(4, "b", 0, 2))


def test_greedy_uses_only_free_streams():
    state = make_state(info("a", instances=4), streams=4)
    for rid in range(1, 6):
        admit(state, rid, "a", rid * 0.1)
    start(state, 1, 1)
    start(state, 2, 2)
    p = plan(Greedy(), state)
    valid(state, p)
    assert p.launches == (L(3, "a", 0, 0), L(4, "a", 0, 3))


def test_greedy_respects_instances_per_model_and_slice():
    state = make_state(info("a", instances=1), info("b", instances=2), streams=8)
    for rid in (1, 2, 3):
        admit(state, rid, "a", rid * 0.1)
    for rid in (4, 5, 6):
        admit(state, rid, "b", rid * 0.1)
    p = plan(Greedy(), state)
    valid(state, p)
    assert p.launches == (L(1, "a", 0, 0), L(4, "b", 0, 1), L(5, "b", 0, 2))


def test_greedy_counts_launches_already_running_against_instances():
    state = make_state(info("a", 2, instances=1), info("b", instances=2), streams=8)
    admit(state, 1, "a", 0.0)
    admit(state, 2, "a", 0.1)
    admit(state, 3, "b", 0.2)
    admit(state, 4, "b", 0.3)
    admit(state, 5, "b", 0.4)
    start(state, 1, 0)   # a slice 0: 1 of 1 instance busy
    start(state, 3, 1)   # b slice 0: 1 of 2 instances busy
    p = plan(Greedy(), state)
    valid(state, p)
    assert p.launches == (L(4, "b", 0, 2),)


def test_greedy_instances_are_per_slice_not_per_model():
    # With instances=1 a model may still run slice 0 of one request beside slice 1 of another.
    state = make_state(info("a", 2, instances=1), streams=4)
    admit(state, 1, "a", 0.0)
    admit(state, 2, "a", 0.1)
    admit(state, 3, "a", 0.2)
    launch = start(state, 1, 0)
    state.requeue(state.finish(launch, 0.1))    # request 1 now waits at slice 1
    p = plan(Greedy(), state)
    valid(state, p)
    assert p.launches == (L(1, "a", 1, 0), L(2, "a", 0, 1))


def test_greedy_skips_a_blocked_request_and_fills_with_younger_ones():
    state = make_state(info("a", instances=1), info("b", instances=1), streams=3)
    admit(state, 1, "a", 0.0)
    admit(state, 2, "a", 0.1)   # blocked: a/0 is taken by request 1 in this same plan
    admit(state, 3, "b", 0.2)
    assert plan(Greedy(), state).launches == (L(1, "a", 0, 0), L(3, "b", 0, 1))


# --- priority -----------------------------------------------------------------------------

def test_priority_puts_realtime_first_and_on_the_high_priority_stream():
    state = make_state(info("rt", priority=RT, instances=4), info("be", instances=4), streams=3)
    admit(state, 1, "be", 0.0)    # oldest, but best-effort
    admit(state, 2, "rt", 0.2)
    p = plan(PriorityStreams(), state)
    valid(state, p)
    assert p.launches == (L(2, "rt", 0, 0), L(1, "be", 0, 1))


def test_priority_orders_realtime_by_earliest_slo_deadline():
    state = make_state(info("slow", priority=RT, slo_ms=500.0, instances=4),
                       info("fast", priority=RT, slo_ms=50.0, instances=4), streams=2)
    admit(state, 1, "slow", 0.00)   # objective at 0.50 s
    admit(state, 2, "fast", 0.10)   # objective at 0.15 s: least slack, goes first
    admit(state, 3, "fast", 0.20)   # objective at 0.25 s
    p = plan(PriorityStreams(), state)
    assert p.launches == (L(2, "fast", 0, 0), L(3, "fast", 0, 1))


def test_priority_uses_an_explicit_deadline_when_it_is_earlier():
    state = make_state(info("rt", priority=RT, slo_ms=1000.0, instances=4), streams=1)
    admit(state, 1, "rt", 0.0)                    # objective at 1.0 s
    admit(state, 2, "rt", 0.1, deadline_s=0.3)    # hard deadline at 0.3 s
    admit(state, 3, "rt", 0.05, deadline_s=5.0)   # later deadline: the SLO (1.05 s) counts
    assert plan(PriorityStreams(), state).launches == (L(2, "rt", 0, 0),)
    start(state, 2, 0)
    state.retire(state.finish(state.running[2], 0.1))
    assert plan(PriorityStreams(), state).launches == (L(1, "rt", 0, 0),)


def test_priority_request_priority_overrides_the_model_class():
    state = make_state(info("m", instances=4), streams=2)
    admit(state, 1, "m", 0.0)
    admit(state, 2, "m", 0.1, priority=RT)
    assert plan(PriorityStreams(), state).launches == (L(2, "m", 0, 0), L(1, "m", 0, 1))


def test_priority_realtime_takes_another_stream_when_the_high_one_is_busy():
    state = make_state(info("rt", priority=RT, instances=4), streams=3)
    for rid in (1, 2, 3):
        admit(state, rid, "rt", rid * 0.1)
    start(state, 1, 0)
    p = plan(PriorityStreams(), state)
    valid(state, p)
    assert p.launches == (L(2, "rt", 0, 1), L(3, "rt", 0, 2))


def test_priority_never_gives_best_effort_the_high_priority_stream():
    state = make_state(info("be", instances=8), streams=4)
    for rid in range(1, 6):
        admit(state, rid, "be", rid * 0.1)
    p = plan(PriorityStreams(), state)
    valid(state, p)
    # Stream 0 stays free even though nothing realtime is waiting.
    assert p.launches == (L(1, "be", 0, 1), L(2, "be", 0, 2), L(3, "be", 0, 3))


def test_priority_best_effort_waits_when_only_the_high_priority_stream_is_free():
    state = make_state(info("be", instances=8), streams=2)
    admit(state, 1, "be", 0.0)
    admit(state, 2, "be", 0.1)
    start(state, 1, 1)
    assert plan(PriorityStreams(), state) == Plan()


def test_priority_with_one_stream_best_effort_may_use_it():
    state = make_state(info("be"), streams=1)
    admit(state, 1, "be", 0.0)
    assert plan(PriorityStreams(), state).launches == (L(1, "be", 0, 0),)


def test_priority_all_streams_high_lets_best_effort_use_them():
    state = SchedState({"be": info("be", instances=4)}, 2, frozenset({0, 1}))
    admit(state, 1, "be", 0.0)
    admit(state, 2, "be", 0.1)
    assert plan(PriorityStreams(), state).launches == (L(1, "be", 0, 0), L(2, "be", 0, 1))


def test_priority_respects_instances_and_lets_others_through():
    state = make_state(info("rt", priority=RT, instances=1), info("be", instances=4), streams=3)
    admit(state, 1, "rt", 0.0)
    admit(state, 2, "rt", 0.1)   # rt/0 has one instance: waits
    admit(state, 3, "be", 0.2)
    p = plan(PriorityStreams(), state)
    valid(state, p)
    assert p.launches == (L(1, "rt", 0, 0), L(3, "be", 0, 1))


# --- selection ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("fifo", Fifo), ("greedy", Greedy),
                                       ("priority", PriorityStreams)])
def test_make_policy_by_name(name, cls):
    policy = make_policy(name)
    assert isinstance(policy, cls) and policy.name == name
    assert name in POLICIES


def test_unknown_policy_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as caught:
        make_policy("round-robin", source="edgesched.yaml")
    e = caught.value
    assert e.key == "scheduler.policy"
    message = str(e)
    assert "\n" not in message
    assert message.startswith("edgesched.yaml: scheduler.policy:")
    assert "'round-robin'" in message
    for known in ("fifo", "greedy", "priority"):
        assert known in message


# --- a realtime and a best-effort queue of one slice share its instances ------------------

@pytest.mark.parametrize("policy, first", [(Greedy(), 1), (PriorityStreams(), 2)],
                         ids=lambda p: getattr(p, "name", ""))
def test_requests_of_one_slice_in_both_classes_share_its_instances(policy, first):
    # Request 2 is realtime by its own priority: it waits in another queue than request 1,
    # but for the same (model, slice), which has one instance.
    state = make_state(info("m", instances=1), info("other"), streams=4)
    admit(state, 1, "m", 0.0)
    admit(state, 2, "m", 0.1, priority=RT)
    admit(state, 3, "other", 0.2)
    p = plan(policy, state)
    valid(state, p)
    assert [launch.request_id for launch in p.launches] == [first, 3]


def test_fifo_takes_the_oldest_head_across_realtime_and_best_effort_queues():
    state = make_state(info("m", 2, instances=2), streams=2)
    admit(state, 1, "m", 0.2, priority=RT)
    admit(state, 2, "m", 0.1)
    assert plan(Fifo(), state).launches == (L(2, "m", 0, 0),)


def test_priority_best_effort_takes_the_streams_realtime_left_in_order():
    # The common plan (one best-effort head, no realtime) and the general one agree on the
    # streams best effort may use: the non-high ones still free, lowest first.
    state = make_state(info("cam", priority=RT), info("bulk", instances=3), streams=4)
    admit(state, 1, "bulk", 0.0)
    assert plan(PriorityStreams(), state).launches == (L(1, "bulk", 0, 1),)
    admit(state, 2, "cam", 0.5)
    admit(state, 3, "bulk", 0.6)
    start(state, 1, 0)                 # the high stream busy: realtime takes stream 1
    p = plan(PriorityStreams(), state)
    valid(state, p)
    assert p.launches == (L(2, "cam", 0, 1), L(3, "bulk", 0, 2))
