"""Scheduling policies: functions of (state, now) returning a plan. They never mutate state.

`fifo`     one slice on the device at a time, oldest request first (Clockwork-style baseline).
`greedy`   a slice on every free stream, oldest request first (naive multi-stream serving).
`priority` greedy, but realtime work first (least slack first) and on the high-priority
           streams; best-effort work never takes a high-priority stream while another is free.
"""
from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Callable, Iterable, Protocol

from edgesched.errors import ConfigError
from edgesched.sched.profile import Profile
from edgesched.sched.state import SchedState
from edgesched.types import EMPTY_PLAN, Launch, Plan, PolicyName, make_launch, make_plan


class Policy(Protocol):
    """A policy may also set `wake_at_s` in each plan: the time it wants to plan again even if
    nothing happens by then (work held back for a request expected by that time)."""
    name: str

    def plan(self, state: SchedState, now_s: float) -> Plan: ...


EMPTY = EMPTY_PLAN


def _heads(state: SchedState, cap: int, realtime_by_urgency: bool) -> tuple[list, list]:
    """(realtime, best-effort) entries, (sort key, id, request), that a plan could launch:
    each ready queue's first few (no more than the slice's free instances or `cap`),
    realtime ones by urgency if asked, the others by arrival. Any later request of a queue
    could only launch after those, on the same terms. The hot loop of a plan, once per
    ready queue: plain attribute, dict and list operations, no tuples built."""
    realtime: list = []
    best_effort: list = []
    models, loads = state.models, state.slice_loads
    for queue in state.ready_queues():
        n = models[queue.model].instances - loads.get(queue.slice_key, 0)
        if n <= 0:
            continue
        if queue.realtime:
            entries = queue.by_urgency if realtime_by_urgency else queue.by_arrival
            out = realtime
        else:
            entries, out = queue.by_arrival, best_effort
        if n == 1 or cap == 1:
            out.append(entries[0])
        else:
            out += entries[:n if n < cap else cap]
    return realtime, best_effort


def _fill(state: SchedState, entries: Iterable[tuple], free: list[int]) -> Plan:
    launches: list[Launch] = []
    _take(state, entries, free, {}, launches)
    return make_plan(tuple(launches)) if launches else EMPTY


def _take(state: SchedState, entries: Iterable[tuple], free: list[int],
          taken: dict[tuple[str, int], int], launches: list[Launch],
          prefer: AbstractSet[int] = frozenset()) -> None:
    """Give each entry's request, in order, a stream of `free` (the first in `prefer` if
    any, else the first; taken from `free`) while streams and instances last, into
    `launches`. Entries come from `_heads`, which took no more of a queue than its slice's
    free instances: a slice's load is checked only once this plan has launched it (`taken`:
    launches per (model, slice) so far, so a realtime and a best-effort queue of one slice
    share its instances)."""
    models, loads = state.models, state.slice_loads
    for _, _, request in entries:
        if not free:
            break
        key = (request.model, request.next_slice)
        used = taken.get(key)
        if used is not None and loads.get(key, 0) + used >= models[request.model].instances:
            continue
        stream = free[0]
        if prefer:
            for s in free:
                if s in prefer:
                    stream = s
                    break
        free.remove(stream)
        taken[key] = 1 if used is None else used + 1
        launches.append(make_launch(request.id, request.model, request.next_slice, stream))


class Fifo:
    name = PolicyName.FIFO.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if state.running or not state.has_ready:
            return EMPTY
        free = state.free_streams()
        if not free:
            return EMPTY
        realtime, best_effort = _heads(state, 1, False)
        if not (realtime or best_effort):
            return EMPTY
        r = min(realtime + best_effort)[2]      # oldest (arrival, id) first
        return make_plan((make_launch(r.id, r.model, r.next_slice, free[0]),))


class Greedy:
    name = PolicyName.GREEDY.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if len(state.running) >= state.num_streams or not state.has_ready:
            return EMPTY
        free = state.free_streams()
        if not free:
            return EMPTY
        realtime, best_effort = _heads(state, state.num_streams - len(state.running), False)
        entries = realtime + best_effort
        if len(entries) == 1:           # the common plan: one head, its instance is free
            r = entries[0][2]
            return make_plan((make_launch(r.id, r.model, r.next_slice, free[0]),))
        entries.sort()                  # (arrival, id): oldest first; ids are unique
        return _fill(state, entries, free)


class PriorityStreams:
    name = PolicyName.PRIORITY.value

    def plan(self, state: SchedState, now_s: float) -> Plan:
        if len(state.running) >= state.num_streams or not state.has_ready:
            return EMPTY
        free = state.free_streams()
        if not free:
            return EMPTY
        high = state.high_priority_streams
        # Realtime by least slack (earliest objective, then id), then best effort by arrival.
        realtime, best_effort = _heads(state, state.num_streams - len(state.running), True)
        if best_effort:
            # The streams best effort may take, in order: not the high-priority ones, unless
            # nothing else can run.
            allowed = None if state.only_high_priority_usable() else [
                s for s in free if s not in high]
            if not realtime and len(best_effort) == 1:
                # The common plan: one best-effort head (its instance is free: _heads), no
                # ranking; what _take would do with it.
                allowed = free if allowed is None else allowed
                if not allowed:
                    return EMPTY
                r = best_effort[0][2]
                return make_plan((make_launch(r.id, r.model, r.next_slice, allowed[0]),))
        realtime.sort()
        best_effort.sort()
        taken: dict[tuple[str, int], int] = {}
        launches: list[Launch] = []
        if realtime:
            _take(state, realtime, free, taken, launches, high)
        if best_effort and free:
            if allowed is None:
                allowed = free
            else:           # (realtime took its streams from `free` since)
                allowed = [s for s in allowed if s in free]
            _take(state, best_effort, allowed, taken, launches)
        return make_plan(tuple(launches)) if launches else EMPTY


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
