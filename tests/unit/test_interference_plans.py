"""`interference` plans that launch several slices, and its memos across plans: hand-built
state, the plan asserted (helpers and demands from test_interference.py)."""
from __future__ import annotations

from edgesched.sched import make_policy
from edgesched.sched.profile import Profile
from edgesched.types import Launch
from tests.unit.test_interference import (
    CAM,
    HEAVY,
    LIGHT,
    PREDICTOR,
    RT,
    TINY,
    admit,
    info,
    launched,
    make_state,
    plan,
    policy,
)


def test_three_realtime_requests_each_launch_once_on_their_own_stream():
    state = make_state(info("a", priority=RT, slo_ms=50.0), info("b", priority=RT, slo_ms=60.0),
                       info("c", priority=RT, slo_ms=70.0))
    for rid, model in ((1, "a"), (2, "b"), (3, "c")):
        admit(state, rid, model, 0.0)
    p = policy({"a": [TINY], "b": [TINY], "c": [TINY]})
    result = plan(p, state, 0.001)
    assert result.launches == (Launch(1, "a", 0, 0), Launch(2, "b", 0, 1), Launch(3, "c", 0, 2))


def test_a_realtime_slice_is_judged_beside_one_launched_earlier_in_the_same_plan():
    # Nothing runs. cam (least slack) starts; det would slow it 1.72x, so it waits, though
    # alone it could start; tiny fits beside cam and starts.
    state = make_state(info("cam", priority=RT, slo_ms=33.0), info("det", priority=RT),
                       info("tiny", priority=RT, slo_ms=200.0))
    admit(state, 1, "cam", 0.0)
    admit(state, 2, "det", 0.0)
    admit(state, 3, "tiny", 0.0)
    p = policy({"cam": [CAM], "det": [HEAVY], "tiny": [TINY]})
    assert launched(plan(p, state, 0.001)) == {1: 0, 3: 1}


def test_best_effort_is_judged_beside_a_realtime_slice_launched_in_the_same_plan():
    # Nothing runs. cam starts on stream 0; light fits beside it (1.03x), heavy would slow it
    # 1.72x and waits, though alone either could start.
    state = make_state(info("cam", priority=RT, slo_ms=33.0), info("heavy"), info("light"))
    admit(state, 1, "cam", 0.0)
    admit(state, 2, "heavy", 0.0)
    admit(state, 3, "light", 0.001)
    p = policy({"cam": [CAM], "heavy": [HEAVY], "light": [LIGHT]})
    assert launched(plan(p, state, 0.002)) == {1: 0, 3: 1}


def _step(state, launches, now_s, finished):
    """Start `launches`, then finish the oldest running launch (requeued or retired)."""
    for launch in launches:
        state.start(launch, now_s)
    if finished and state.running:
        rid = next(iter(state.running))
        request = state.finish(state.running[rid], 0.001)
        if request.next_slice < request.num_slices:
            state.requeue(request)
        else:
            state.retire(request)


def test_memos_kept_across_plans_never_change_a_decision():
    """One long-lived policy (memos, members of running launches kept from plan to plan) plans
    exactly as a fresh policy does, over a changing state: launches start and end, slices
    advance (a running request's next slice has other demands), new requests arrive."""
    state = make_state(info("cam", 2, priority=RT, slo_ms=33.0), info("bulk", 2),
                       info("tag", instances=2), streams=3)
    demands = {"cam": (TINY, CAM), "bulk": (HEAVY, LIGHT), "tag": (LIGHT,)}
    profile = Profile("test", demands, PREDICTOR)
    kept = make_policy("interference", profile=profile, tolerance=1.10)
    rid, now = 0, 0.0
    launches_seen = 0
    for k in range(60):
        if k % 3 == 0:
            for model in ("cam", "bulk", "tag"):
                rid += 1
                admit(state, rid, model, now)
        fresh = make_policy("interference", profile=profile, tolerance=1.10)
        expected = fresh.plan(state, now)
        got = plan(kept, state, now)
        assert got == expected, k
        launches_seen += len(got.launches)
        _step(state, got.launches, now, finished=k % 2 == 1)
        now += 0.004
    assert launches_seen >= 20       # the scenario did exercise launches, not empty plans
