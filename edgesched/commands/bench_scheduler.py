"""`edgesched bench scheduler`: what one plan costs as the queue grows.

Hand-built state, no device: 8 models x 4 slices (4 realtime, 4 best effort, demands from
compute-bound to memory-bound), 4 streams, 2 launches running, N requests waiting spread over
models and slices, all still able to meet their objectives. Each policy plans the same state
repeatedly; the figure is the median microseconds per `plan` call on this machine (the least
of 5 runs' medians). The goal is a cost flat in N (work per distinct ready (model, slice), not
per request).
"""
from __future__ import annotations

import time

import numpy as np

from edgesched.commands.table import format_table
from edgesched.sched import Request, SchedState, make_policy
from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.types import Launch, ModelInfo, Priority, SliceDemand, TensorSpec

MODELS, SLICES, STREAMS = 8, 4, 4
WAITING = (8, 64, 256, 512)
POLICIES = ("fifo", "greedy", "priority", "interference")
_SPEC = TensorSpec("x", "float32", (1,))
NOW_S = 10.0


def bench_state(waiting: int) -> tuple[SchedState, Profile]:
    """The benchmark's state with `waiting` requests queued, and its profile."""
    infos, demands = {}, {}
    for m in range(MODELS):
        realtime = m < MODELS // 2
        name = f"m{m}"
        infos[name] = ModelInfo(name, (_SPEC,), (_SPEC,), SLICES, 33.0 if realtime else 500.0,
                                Priority.REALTIME if realtime else Priority.BEST_EFFORT,
                                2 if m % 3 == 0 else 1)
        demands[name] = tuple(
            SliceDemand(sm=0.2 + 0.1 * ((m + i) % 7), mem=0.1 + 0.1 * ((m * 3 + i) % 6),
                        duration_us=500.0 + 250.0 * ((m + 2 * i) % 5)) for i in range(SLICES))
    state = SchedState(infos, STREAMS)
    names = list(infos)
    rid = 0
    # Two running launches: one realtime on the high-priority stream, one best effort.
    for name, stream in ((names[0], 0), (names[-1], 1)):
        rid += 1
        state.admit(Request(rid, name, infos[name].priority, NOW_S - 0.003,
                            infos[name].slo_ms / 1e3, SLICES))
        state.start(Launch(rid, name, 0, stream), NOW_S - 0.002)
    for k in range(waiting):
        rid += 1
        name = names[k % MODELS]
        info = infos[name]
        # Arrived over the last 2 ms: every objective can still be met (a late backlog would
        # be refused at the first deadline check and flatter the figure).
        state.admit(Request(rid, name, info.priority, NOW_S - 0.002 * (1 - k / waiting),
                            info.slo_ms / 1e3, SLICES, next_slice=(k // MODELS) % SLICES))
    return state, Profile("bench", demands, Predictor(a=1.0, b=1.0, c=0.5))


def plan_us(policy_name: str, waiting: int, repeats: int = 2000) -> float:
    """Median microseconds of one plan of `policy_name` with `waiting` requests queued."""
    state, profile = bench_state(waiting)
    policy = make_policy(policy_name, profile=profile)
    now = NOW_S
    for _ in range(50):
        policy.plan(state, now)
    # The least of 5 medians: a shared VM's neighbours only ever add time.
    best = float("inf")
    clock = time.perf_counter
    for _ in range(5):
        samples = np.empty(max(repeats // 5, 1))
        for i in range(len(samples)):
            start = clock()
            policy.plan(state, now)
            samples[i] = clock() - start
        best = min(best, float(np.median(samples)))
    return best * 1e6


def bench_scheduler(policies=POLICIES, waiting=WAITING, repeats: int = 2000) -> str:
    rows = [[p] + [plan_us(p, n, repeats) for n in waiting] for p in policies]
    return (f"edgesched bench scheduler: median us per plan, {MODELS} models x {SLICES} slices, "
            f"{STREAMS} streams, 2 launches running (goal <= 20 us, flat)\n"
            + format_table(["policy"] + [f"{n}_waiting" for n in waiting], rows))
