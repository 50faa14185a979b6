"""A plan's work is per distinct ready (model, slice), not per queued request: asserted as
behaviour (the same plan, the same predictor calls), never as wall-clock time."""
from __future__ import annotations

import pytest

from edgesched.commands.bench_scheduler import bench_state
from edgesched.sched import Request, SchedState, make_policy
from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.types import Launch, ModelInfo, Priority, SliceDemand, TensorSpec
from tests.unit.test_interference import CountingPredictor

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
SPEC = TensorSpec("x", "float32", (1,))
POLICIES = ("fifo", "greedy", "priority", "interference")


def backlog(waiting_per_slice: int) -> tuple[SchedState, Profile]:
    """Two realtime and two best-effort models of 2 slices, one realtime launch running, and
    `waiting_per_slice` requests queued at each (model, slice), the later ones arriving later."""
    models = {"cam": RT, "lidar": RT, "map": BE, "tag": BE}
    infos = {m: ModelInfo(m, (SPEC,), (SPEC,), 2, 33.0 if p is RT else 500.0, p,
                          2 if m == "tag" else 1) for m, p in models.items()}
    demands = {"cam": (SliceDemand(0.6, 0.2, 2000.0),) * 2,
               "lidar": (SliceDemand(0.3, 0.3, 1000.0),) * 2,
               "map": (SliceDemand(0.7, 0.1, 4000.0), SliceDemand(0.2, 0.5, 3000.0)),
               "tag": (SliceDemand(0.1, 0.6, 1000.0),) * 2}
    state = SchedState(infos, 4)
    state.admit(Request(1, "cam", RT, 0.999, 0.033, 2))
    state.start(Launch(1, "cam", 0, 0), 0.999)
    rid = 1
    for k in range(waiting_per_slice):
        for model in models:
            for index in range(2):
                rid += 1
                state.admit(Request(rid, model, models[model], 0.9991 + 1e-6 * rid,
                                    infos[model].slo_ms / 1e3, 2, next_slice=index))
    return state, Profile("test", demands, Predictor(a=1.0, b=1.0, c=0.5))


@pytest.mark.parametrize("name", POLICIES)
def test_the_plan_is_the_same_for_8_and_512_waiting(name):
    few, profile = backlog(1)       # 8 waiting
    many, _ = backlog(64)           # 512 waiting: the first 8 are the same requests
    assert len(few.requests) - 1 == 8 and len(many.requests) - 1 == 512
    plan_few = make_policy(name, profile=profile).plan(few, 1.0)
    plan_many = make_policy(name, profile=profile).plan(many, 1.0)
    assert plan_few == plan_many
    if name != "fifo":
        assert plan_few.launches, "the backlog should start something beside the camera"


def test_interference_asks_the_predictor_as_often_at_8_and_512_waiting():
    calls = []
    for per_slice in (1, 64):
        state, profile = backlog(per_slice)
        policy = make_policy("interference", profile=profile)
        policy.predictor = counter = CountingPredictor(profile.predictor)
        policy.plan(state, 1.0)
        calls.append(counter.calls)
    assert calls[0] == calls[1] and calls[0] > 0


def test_a_repeated_plan_beside_the_same_running_set_asks_the_predictor_nothing_new():
    """Judgements are pure functions of the slices involved: kept across plans."""
    state, profile = bench_state(256)
    policy = make_policy("interference", profile=profile)
    policy.predictor = counter = CountingPredictor(profile.predictor)
    first = policy.plan(state, 10.0)
    asked = counter.calls
    assert policy.plan(state, 10.0) == first and counter.calls == asked


def test_queues_keep_each_models_requests_by_arrival_across_slices():
    state, _ = backlog(2)
    ids = [r.id for r in state.waiting_for("map")]
    arrivals = [state.requests[i].arrival_s for i in ids]
    assert arrivals == sorted(arrivals) and len(ids) == 4
    request = state.requests[ids[1]]
    state.retire(request)
    assert request.id not in [r.id for r in state.waiting_for("map")]
    waiting = state.waiting_for("map")[0]
    state.start(Launch(waiting.id, "map", waiting.next_slice, 3), 1.0)
    with pytest.raises(ValueError):     # running, so no longer waiting
        state.start(Launch(waiting.id, "map", waiting.next_slice, 2), 1.0)
