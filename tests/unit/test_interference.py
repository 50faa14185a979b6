"""The `interference` policy, data in and data out: hand-built state and profile, the plan asserted.

Demands are chosen so each decision follows by hand from the predictor's form (a=1, b=1,
c=0.5; tolerance 1.10): with P_sm, P_mem the sums over the co-runners, slice i slows by
    1 + cf_i max(0, P_sm - 1) + mem_i max(0, P_mem - 1) + 0.5 mem_i (P_mem - mem_i).
"""
from __future__ import annotations

import dataclasses

import pytest

from edgesched.sched import Request, SchedState, make_policy
from edgesched.sched.interference import UNKNOWN, Interference
from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.types import Launch, ModelInfo, Plan, Priority, SliceDemand, TensorSpec

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
SPEC = TensorSpec("x", "float32", (1,))
PREDICTOR = Predictor(a=1.0, b=1.0, c=0.5)
TOLERANCE = 1.10
D = SliceDemand
CAM = D(sm=0.9, mem=0.1, duration_us=5000.0, compute_frac=0.9)     # realtime, compute-bound
HEAVY = D(sm=0.9, mem=0.1, duration_us=2000.0, compute_frac=0.9)   # conflicts with CAM: 1.72x
LIGHT = D(sm=0.1, mem=0.6, duration_us=2000.0, compute_frac=0.05)  # complements CAM: 1.03x
MID = D(sm=0.15, mem=0.3, duration_us=2000.0, compute_frac=0.3)    # beside CAM: 1.06x
TINY = D(sm=0.05, mem=0.02, duration_us=1000.0, compute_frac=0.5)
PERIOD_S = 0.1


def info(name: str, slices: int = 1, *, priority: Priority = BE, slo_ms: float = 100.0,
         instances: int = 1) -> ModelInfo:
    return ModelInfo(name, (SPEC,), (SPEC,), slices, slo_ms, priority, instances)


def make_state(*models: ModelInfo, streams: int = 4) -> SchedState:
    return SchedState({m.name: m for m in models}, streams)


def admit(state: SchedState, rid: int, model: str, arrival_s: float, *,
          deadline_s: float | None = None, priority: Priority | None = None,
          next_slice: int = 0) -> Request:
    m = state.models[model]
    request = Request(rid, model, priority or m.priority, arrival_s, m.slo_ms / 1e3,
                      m.num_slices, deadline_s, next_slice=next_slice)
    state.admit(request)
    return request


def start(state: SchedState, rid: int, stream: int, now_s: float = 0.0) -> Launch:
    request = state.requests[rid]
    launch = Launch(rid, request.model, request.next_slice, stream)
    state.start(launch, now_s)
    return launch


def served(state: SchedState, model: str, times: list[float], first_rid: int = 1000) -> None:
    """Requests of `model` that arrived at `times` and are answered: only the arrival
    history (next_arrival_s) remains."""
    for k, t in enumerate(times):
        state.retire(admit(state, first_rid + k, model, t))


def policy(demands: dict[str, list[SliceDemand]] | None, **options) -> Interference:
    profile = None if demands is None else Profile(
        "test", {m: tuple(ds) for m, ds in demands.items()}, PREDICTOR)
    options.setdefault("tolerance", TOLERANCE)
    made = make_policy("interference", profile=profile, **options)
    assert isinstance(made, Interference) and made.name == "interference"
    return made


def snapshot(state: SchedState) -> tuple:
    """Everything a policy could change, as plain values."""
    return (
        {rid: dataclasses.asdict(r) for rid, r in state.requests.items()},
        dict(state.running),
        {k: [e[1] for e in q.by_arrival] for k, q in state._queues.items()},
        set(state._busy_streams), dict(state._slice_load), dict(state._pending),
        {m: (g.last_s, list(g._sorted)) for m, g in state.gaps.items()}, state.num_streams,
        state.high_priority_streams,
    )


def plan(p: Interference, state: SchedState, now_s: float) -> Plan:
    before = snapshot(state)
    result = p.plan(state, now_s)
    assert snapshot(state) == before, "the policy changed the state"
    assert isinstance(result, Plan) and isinstance(result.launches, tuple)
    streams = [launch.stream for launch in result.launches]
    assert len(set(streams)) == len(streams) and set(streams) <= set(state.free_streams())
    for launch in result.launches:
        request = state.requests[launch.request_id]
        assert (launch.model, launch.slice_index) == (request.model, request.next_slice)
        assert launch.request_id not in state.running
    assert not {launch.request_id for launch in result.launches} & set(result.rejects)
    return result


def launched(result: Plan) -> dict[int, int]:
    """request id -> stream."""
    return {launch.request_id: launch.stream for launch in result.launches}


def camera_state(*others: ModelInfo, streams: int = 4) -> SchedState:
    """A realtime camera model at 1 / PERIOD_S fps (two frames served: the next is expected
    at 0.2 s) and the given best-effort models."""
    state = make_state(info("cam", priority=RT, slo_ms=33.0), *others, streams=streams)
    served(state, "cam", [0.0, PERIOD_S])
    assert state.next_arrival_s("cam") == pytest.approx(2 * PERIOD_S)
    return state


# --- realtime first, on the high-priority stream -------------------------------------------

@pytest.mark.parametrize("b_us, first", [(30_000.0, 2), (1_000.0, 1)])
def test_realtime_goes_first_by_least_slack(b_us, first):
    # a: deadline 50 ms, needs 1 ms; b: deadline 60 ms, needs b_us. Least slack, not the
    # earliest deadline: a 30 ms b has 30 ms of slack against a's 49.
    state = make_state(info("a", priority=RT, slo_ms=50.0), info("b", priority=RT, slo_ms=60.0),
                       streams=1)
    admit(state, 1, "a", 0.0)
    admit(state, 2, "b", 0.0)
    p = policy({"a": [dataclasses.replace(TINY, duration_us=1000.0)],
                "b": [dataclasses.replace(TINY, duration_us=b_us)]})
    assert launched(plan(p, state, 0.0)) == {first: 0}


def test_realtime_goes_to_stream_0_and_the_next_to_a_normal_stream():
    state = make_state(info("a", priority=RT), info("b", priority=RT, slo_ms=200.0))
    admit(state, 1, "a", 0.0)
    admit(state, 2, "b", 0.0)
    p = policy({"a": [TINY], "b": [TINY]})
    assert launched(plan(p, state, 0.001)) == {1: 0, 2: 1}


def test_realtime_takes_a_normal_stream_when_stream_0_is_busy():
    state = make_state(info("a", priority=RT), info("b", priority=RT))
    admit(state, 1, "a", 0.0)
    admit(state, 2, "b", 0.0)
    start(state, 1, 0)
    p = policy({"a": [TINY], "b": [TINY]})
    assert launched(plan(p, state, 0.001)) == {2: 1}


def test_two_conflicting_realtime_slices_do_not_co_run():
    state = make_state(info("cam", priority=RT), info("det", priority=RT))
    admit(state, 1, "cam", 0.0)
    admit(state, 2, "det", 0.0)
    start(state, 1, 0)
    p = policy({"cam": [CAM], "det": [HEAVY]})
    assert plan(p, state, 0.001).launches == ()


def test_a_realtime_slice_starts_beside_best_effort_work():
    # Slices are not preemptible: waiting for the best-effort slice would cost more.
    state = camera_state(info("bulk"))
    admit(state, 1, "bulk", 0.15)
    start(state, 1, 1, 0.15)
    admit(state, 2, "cam", 2 * PERIOD_S)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert launched(plan(p, state, 2 * PERIOD_S)) == {2: 0}


# --- best effort fills what is left ---------------------------------------------------------

def test_best_effort_never_takes_stream_0_when_there_are_others():
    state = make_state(*(info(f"m{i}") for i in range(5)))
    for i in range(5):
        admit(state, i + 1, f"m{i}", 0.001 * i)
    p = policy({f"m{i}": [TINY] for i in range(5)})
    result = plan(p, state, 0.01)
    assert sorted(launched(result).values()) == [1, 2, 3]
    assert launched(result) == {1: 1, 2: 2, 3: 3}       # oldest first among equals


def test_best_effort_waits_when_only_stream_0_is_free():
    state = make_state(*(info(f"m{i}") for i in range(4)))
    for i in range(4):
        admit(state, i + 1, f"m{i}", 0.0)
    for rid, stream in ((1, 1), (2, 2), (3, 3)):
        start(state, rid, stream)
    assert plan(policy({f"m{i}": [TINY] for i in range(4)}), state, 0.01).launches == ()


def test_with_one_stream_best_effort_may_use_it():
    state = make_state(info("bulk"), streams=1)
    admit(state, 1, "bulk", 0.0)
    assert launched(plan(policy({"bulk": [TINY]}), state, 0.01)) == {1: 0}


def test_best_effort_that_would_slow_a_running_realtime_slice_waits():
    state = camera_state(info("bulk"))
    admit(state, 1, "cam", PERIOD_S + 0.0005)
    start(state, 1, 0, PERIOD_S + 0.0005)
    admit(state, 2, "bulk", 0.05)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert p.predictor.slowdowns([CAM, HEAVY])[0] > TOLERANCE
    assert plan(p, state, PERIOD_S + 0.001).launches == ()


def test_a_complementary_best_effort_slice_runs_beside_realtime():
    state = camera_state(info("tagger"))
    admit(state, 1, "cam", PERIOD_S)
    start(state, 1, 0, PERIOD_S)
    admit(state, 2, "tagger", 0.05)
    p = policy({"cam": [CAM], "tagger": [LIGHT]})
    assert p.predictor.slowdowns([CAM, LIGHT])[0] <= TOLERANCE
    assert launched(plan(p, state, PERIOD_S + 0.001)) == {2: 1}


def test_the_most_complementary_best_effort_slice_goes_first():
    state = camera_state(info("mid"), info("light"), streams=2)
    admit(state, 1, "cam", PERIOD_S)
    start(state, 1, 0, PERIOD_S)
    admit(state, 2, "mid", 0.01)               # older, but slows the camera more (1.06x)
    admit(state, 3, "light", 0.02)             # 1.03x
    p = policy({"cam": [CAM], "mid": [MID], "light": [LIGHT]})
    assert p.predictor.slowdowns([CAM, LIGHT])[0] < p.predictor.slowdowns([CAM, MID])[0] \
        <= TOLERANCE
    assert launched(plan(p, state, PERIOD_S + 0.001)) == {3: 1}


@pytest.mark.parametrize("deadline_ms, admitted", [(5.1, False), (5.2, True)])
def test_best_effort_may_not_push_a_running_realtime_request_past_its_deadline(
        deadline_ms, admitted):
    # Within tolerance (1.03x), but 5 ms of camera work x 1.03 = 5.15 ms.
    now = PERIOD_S + 0.001
    state = camera_state(info("tagger"))
    admit(state, 1, "cam", PERIOD_S, deadline_s=now + deadline_ms / 1e3)
    start(state, 1, 0, now)
    admit(state, 2, "tagger", 0.05)
    p = policy({"cam": [CAM], "tagger": [LIGHT]})
    assert launched(plan(p, state, now)) == ({2: 1} if admitted else {})


# --- ... and stays out of the way of the next frame ------------------------------------------

def test_conflicting_best_effort_runs_when_it_ends_before_the_next_frame():
    state = camera_state(info("bulk"))
    admit(state, 1, "bulk", 0.12)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert launched(plan(p, state, 0.15)) == {1: 1}        # ends 0.152 < 0.2


def test_conflicting_best_effort_waits_when_the_next_frame_is_due_first():
    state = camera_state(info("bulk"))
    admit(state, 1, "bulk", 0.12)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert plan(p, state, 0.199).launches == ()            # would end at 0.201 > 0.2


def test_complementary_best_effort_runs_even_just_before_the_next_frame():
    state = camera_state(info("tagger"))
    admit(state, 1, "tagger", 0.12)
    p = policy({"cam": [CAM], "tagger": [LIGHT]})
    assert launched(plan(p, state, 0.199)) == {1: 1}


def test_any_slice_of_a_multi_slice_camera_model_counts():
    # Slice 0 of the camera model is harmless beside the job; slice 1 is not.
    state = make_state(info("cam", 2, priority=RT, slo_ms=33.0), info("bulk"))
    served(state, "cam", [0.0, PERIOD_S])
    admit(state, 1, "bulk", 0.12)
    p = policy({"cam": [TINY, CAM], "bulk": [HEAVY]})
    assert plan(p, state, 0.199).launches == ()
    p = policy({"cam": [TINY, TINY], "bulk": [HEAVY]})
    assert launched(plan(p, state, 0.199)) == {1: 1}


def test_best_effort_is_not_starved_by_a_realtime_model_that_never_comes():
    """A configured realtime model nobody sends requests to leaves the whole device free;
    a conflicting best-effort request must still run some time (here: on an idle device)."""
    state = make_state(info("cam", priority=RT, slo_ms=33.0), info("bulk"))
    admit(state, 1, "bulk", 0.0)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert launched(plan(p, state, 60.0)) == {1: 1}


def test_best_effort_is_not_starved_once_the_camera_has_stopped():
    """Two frames, then nothing for 600 periods: the next frame is no longer 'expected'."""
    state = camera_state(info("bulk"))
    admit(state, 1, "bulk", 59.0)
    p = policy({"cam": [CAM], "bulk": [HEAVY]})
    assert launched(plan(p, state, 60.0)) == {1: 1}


# --- early reject -------------------------------------------------------------------------

def deadline_state() -> SchedState:
    return make_state(info("cam", 4, priority=RT, slo_ms=33.0), info("bulk", 2))


def reject_policy(early_reject: bool = True) -> Interference:
    # bulk: 2 x 2 ms, small enough to run beside anything the camera might send.
    small = dataclasses.replace(TINY, duration_us=2000.0)
    return policy({"cam": [CAM] * 4, "bulk": [small] * 2}, early_reject=early_reject)


def test_early_reject_answers_a_request_that_cannot_make_its_client_deadline():
    state = deadline_state()
    admit(state, 1, "cam", 0.0, deadline_s=0.019)      # needs 20 ms alone
    admit(state, 2, "cam", 0.0, deadline_s=0.021)      # makes it alone
    result = plan(reject_policy(), state, 0.0)
    assert result.rejects == (1,)
    assert launched(result) == {2: 0}


def test_early_reject_counts_only_the_slices_left():
    state = deadline_state()
    admit(state, 1, "cam", 0.0, deadline_s=0.011, next_slice=2)    # 10 ms left
    admit(state, 2, "cam", 0.0, deadline_s=0.009, next_slice=2)
    result = plan(reject_policy(), state, 0.0)
    assert result.rejects == (2,) and launched(result) == {1: 0}


def test_early_reject_needs_a_client_deadline():
    state = deadline_state()
    admit(state, 1, "cam", 0.0)                        # SLO (33 ms) long gone, no deadline
    result = plan(reject_policy(), state, 1.0)
    assert result.rejects == ()
    assert launched(result) == {1: 0}


def test_early_reject_is_off_unless_asked_for():
    state = deadline_state()
    admit(state, 1, "cam", 0.0, deadline_s=0.019)
    result = plan(reject_policy(early_reject=False), state, 0.0)
    assert result.rejects == () and launched(result) == {1: 0}


def test_early_reject_applies_to_best_effort_requests_with_a_deadline():
    state = deadline_state()
    admit(state, 1, "bulk", 0.0, deadline_s=0.003)     # needs 4 ms alone
    admit(state, 2, "bulk", 0.0)
    result = plan(reject_policy(), state, 0.0)
    assert result.rejects == (1,)
    assert launched(result) == {2: 1}


def test_early_reject_works_with_every_stream_busy():
    state = deadline_state()
    admit(state, 1, "cam", 0.0, deadline_s=0.019)
    for rid, stream in ((2, 0), (3, 1), (4, 2), (5, 3)):
        admit(state, rid, "cam" if stream == 0 else "bulk", 0.0)
        start(state, rid, stream)
    assert state.free_streams() == []
    result = plan(reject_policy(), state, 0.0)
    assert result.rejects == (1,) and result.launches == ()


# --- the profile ----------------------------------------------------------------------------

def test_a_slice_missing_from_the_profile_gets_the_conservative_guess():
    def outcome(demands: dict) -> dict[int, int]:
        state = camera_state(info("mystery"))
        admit(state, 1, "cam", PERIOD_S)
        start(state, 1, 0, PERIOD_S)
        admit(state, 2, "mystery", 0.05)
        return launched(plan(policy(demands), state, PERIOD_S + 0.001))

    cam = D(sm=0.5, mem=0.1, duration_us=5000.0, compute_frac=0.8)
    small = D(sm=0.2, mem=0.1, duration_us=1000.0, compute_frac=0.2)
    assert outcome({"cam": [cam], "mystery": [small]}) == {2: 1}
    assert PREDICTOR.slowdowns([cam, UNKNOWN])[0] > TOLERANCE
    assert outcome({"cam": [cam]}) == {}                       # model missing
    assert outcome({"cam": [cam], "mystery": []}) == {}        # its slice missing


def test_without_a_profile_the_policy_still_serves_alone():
    state = make_state(info("cam", priority=RT), info("bulk"))
    admit(state, 1, "cam", 0.0)
    admit(state, 2, "bulk", 0.0)
    result = plan(policy(None), state, 0.001)
    assert launched(result) == {1: 0}


def test_the_policy_never_changes_the_state_it_plans_from():
    state = camera_state(info("bulk"), info("tagger", instances=2))
    admit(state, 1, "cam", PERIOD_S, deadline_s=PERIOD_S + 0.02)
    start(state, 1, 0, PERIOD_S)
    for rid in range(2, 8):
        admit(state, rid, "bulk" if rid % 2 else "tagger", 0.05 + rid / 1000,
              deadline_s=None if rid % 3 else 0.09)
    p = policy({"cam": [CAM], "bulk": [HEAVY], "tagger": [LIGHT]}, early_reject=True)
    for now in (PERIOD_S + 0.001, 0.15, 0.199, 0.3):
        plan(p, state, now)                    # plan() asserts the state is untouched


# --- decision cost ----------------------------------------------------------------------------

class CountingPredictor:
    def __init__(self, inner: Predictor):
        self.inner, self.calls = inner, 0

    def slowdowns(self, demands):
        self.calls += 1
        return self.inner.slowdowns(demands)


def backlog_state(per_model: int) -> SchedState:
    """A camera frame running on stream 0 and a backlog of conflicting best-effort work."""
    state = camera_state(info("bulk"), info("other"))
    admit(state, 1, "cam", PERIOD_S)
    start(state, 1, 0, PERIOD_S)
    rid = 2
    for model in ("bulk", "other"):
        for k in range(per_model):
            admit(state, rid, model, 0.01 + k * 1e-4)
            rid += 1
    return state


def predictor_calls(state: SchedState, now_s: float) -> tuple[int, Plan]:
    p = policy({"cam": [CAM], "bulk": [HEAVY], "other": [HEAVY]})
    counter = CountingPredictor(p.predictor)
    p.predictor = counter
    result = plan(p, state, now_s)
    return counter.calls, result


def test_a_plan_makes_few_predictor_calls():
    calls, result = predictor_calls(backlog_state(2), PERIOD_S + 0.001)
    assert result.launches == ()
    assert 1 <= calls <= 12, calls


def test_plan_cost_does_not_grow_with_a_backlog_of_identical_requests():
    """64 queued requests of a model (the default queue depth) whose next slices are the same
    cannot need 32 times the predictor calls of 2: the decision is per slice, not per request."""
    few, _ = predictor_calls(backlog_state(2), PERIOD_S + 0.001)
    many, result = predictor_calls(backlog_state(64), PERIOD_S + 0.001)
    assert result.launches == ()
    assert many <= 2 * few, (few, many)


def test_with_every_stream_busy_a_plan_costs_no_predictor_calls():
    state = backlog_state(2)
    for rid, stream in ((2, 1), (3, 2), (4, 3)):
        start(state, rid, stream, PERIOD_S)
    calls, result = predictor_calls(state, PERIOD_S + 0.001)
    assert result.launches == () and calls == 0


# --- several cameras into one model: bursts, then a pause -----------------------------------

BURST_S = 0.001        # four cameras' frames 1 ms apart, every PERIOD_S


def burst_state() -> tuple[SchedState, float]:
    """cam fed by four in-phase cameras (8 periods served) and a best-effort `bulk` model
    that cannot run beside cam's slice (HEAVY): only the arrival estimate lets it run."""
    state = make_state(info("cam", priority=RT, slo_ms=33.0), info("bulk"))
    times = sorted(k * PERIOD_S + c * BURST_S for k in range(8) for c in range(4))
    served(state, "cam", times)
    return state, times[-1]


def test_best_effort_runs_in_the_pause_after_a_burst_and_not_inside_it():
    state, last = burst_state()
    p = policy({"cam": [CAM], "bulk": [HEAVY]})          # 2 ms; the pause is ~97 ms
    admit(state, 1, "bulk", last)
    inside = plan(p, state, last + 0.0005)               # the burst may not be over
    assert inside.launches == ()
    assert p.wake_at_s == pytest.approx(last + BURST_S)  # when the estimate moves on
    after = plan(p, state, last + 0.0015)                # past every in-burst gap
    assert launched(after) == {1: 1} and p.wake_at_s is None


def test_best_effort_that_would_run_into_the_next_burst_waits_for_it():
    state, last = burst_state()
    long = dataclasses.replace(HEAVY, duration_us=PERIOD_S * 1e6)   # longer than the pause
    p = policy({"cam": [CAM], "bulk": [long]})
    admit(state, 1, "bulk", last)
    assert plan(p, state, last + 0.0015).launches == ()
    # the next burst is expected from its window's (jitter-widened) start: plan again then
    assert last + BURST_S < p.wake_at_s <= last + PERIOD_S - 3 * BURST_S


def test_the_engine_plans_again_at_the_policys_wake_time():
    """Nothing else happens (no arrival, no completion): the engine's wait ends at wake_at_s,
    so the held-back slice is reconsidered then, not at the next event."""
    from edgesched.engine import Engine
    from edgesched.types import EMPTY_PLAN
    from tests.fakes import FakeBackend

    class Holding:
        name = "holding"
        wake_at_s = None

        def plan(self, state, now_s):
            self.wake_at_s = now_s + 0.004 if now_s < 1.0 else None
            return EMPTY_PLAN

    backend = FakeBackend(start_s=0.5)
    engine = Engine(backend, {"bulk": info("bulk")}, Holding(), queue_depth=8,
                    on_result=lambda r: None, clock=backend.clock)
    engine.step(1.0)
    assert backend.polls[-1] == pytest.approx(0.004)      # not the 1 s it was allowed
    backend.set_time(1.5)
    engine.step(1.0)
    assert backend.polls[-1] == pytest.approx(1.0)        # no wake asked: the usual wait
