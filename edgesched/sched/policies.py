"""Scheduling policies: functions of (state, now) returning a plan. They never mutate state.

`fifo`     one slice on the device at a time, oldest request first (Clockwork-style baseline).
`greedy`   a slice on every free stream, oldest request first (naive multi-stream serving).
`priority` greedy, but realtime work first (least slack first) and on the high-priority
           streams; best-effort work never takes a high-priority stream while another is free.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

from edgesched.errors import ConfigError
from edgesched.sched.profile import Profile
from edgesched.sched.state import Request, SchedState
from edgesched.types import Launch, Plan, PolicyName, Priority


class Policy(Protocol):
    name: str

    def plan(self, state: SchedState, now_s: float) -> Plan: ...


def _heads(state: SchedState, free: int, realtime_by_urgency: bool) -> list[Request]:
    """The requests a plan could launch: each ready queue's first few (no more than the
    slice's free instances or `free` streams), realtime ones by urgency if asked, the others
    by arrival. Any later request of a queue could only launch after those, on the same terms."""
    heads: list[Request] = []
    models, loads = state.models, state.slice_loads
    for key, queue in state.ready():
        n = models[key[0]].instances - loads.get(key[:2], 0)
        if n > 0:
            if n > free:
                n = free
            heads += [e[2] for e in (queue.by_urgency[:n] if key[2] and realtime_by_urgency
                                     else queue.by_arrival[:n])]
    return heads


def _oldest_first(state: SchedState, free: int) -> list[Request]:
    return sorted(_heads(state, free, False), key=lambda r: r.order_key)


def _fill(state: SchedState, candidates: Iterable[Request],
          pick_stream: Callable[[Request, list[int]], int | None]) -> Plan:
    """Give each candidate, in order, a free stream while streams and instances last."""
    free = state.free_streams()
    if not free:
        return Plan()
    load: dict[tuple[str, int], int] = {}
    launches = []
    for request in candidates:
        if not free:
            break
        key = (request.model, request.next_slice)
        used = load.get(key, state.slice_load(*key))
        if used >= state.models[request.model].instances:
            continue
        stream = pick_stream(request, free)
        if stream is None:
            continue
        free.remove(stream)
        load[key] = used + 1
        launches.append(Launch(request.id, request.model, request.next_slice, stream))
    return Plan(tuple(launches))


class Fifo:
    name = PolicyName.FIFO.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if state.running or not state.has_ready:
            return Plan()
        return _fill(state, _oldest_first(state, 1)[:1], lambda r, free: free[0])


class Greedy:
    name = PolicyName.GREEDY.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if len(state.running) >= state.num_streams or not state.has_ready:
            return Plan()
        free = state.num_streams - len(state.running)
        return _fill(state, _oldest_first(state, free), lambda r, free: free[0])


class PriorityStreams:
    name = PolicyName.PRIORITY.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if len(state.running) >= state.num_streams or not state.has_ready:
            return Plan()
        high = state.high_priority_streams
        all_high = state.only_high_priority_usable()

        def pick(request: Request, free: list[int]) -> int | None:
            if request.priority is Priority.REALTIME:
                return next((s for s in free if s in high), free[0])
            return next((s for s in free if all_high or s not in high), None)

        def urgency(r: Request) -> tuple:
            # Realtime by least slack (earliest objective), then best-effort by arrival.
            if r.priority is Priority.REALTIME:
                return (0, r.urgency_s, r.id)
            return (1, r.arrival_s, r.id)

        heads = _heads(state, state.num_streams - len(state.running), True)
        return _fill(state, sorted(heads, key=urgency), pick)


def _interference(profile: Profile | None = None, **options) -> Policy:
    from edgesched.sched.interference import Interference
    return Interference(profile, **options)


POLICIES: dict[str, Callable[..., Policy]] = {
    PolicyName.FIFO.value: lambda profile=None, **_: Fifo(),
    PolicyName.GREEDY.value: lambda profile=None, **_: Greedy(),
    PolicyName.PRIORITY.value: lambda profile=None, **_: PriorityStreams(),
    PolicyName.INTERFERENCE.value: _interference,
}


def make_policy(name: str, source: str = "config", profile: Profile | None = None,
                **options) -> Policy:
    """The named policy; `profile` (measured demands + predictor) informs `interference`,
    `options` are its settings (tolerance, early_reject)."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(source, "scheduler.policy",
                          "one of " + ", ".join(sorted(POLICIES)), name) from None
    return factory(profile=profile, **options)
