"""`interference`: realtime work keeps its latency; best-effort work fills what is left.

Per plan, with the profile's per-slice demands and the fitted predictor:
- Realtime requests go first, least slack first (deadline minus the solo time of the slices
  they still need), on the high-priority stream when it is free.
- A slice joins running work only if the predictor says every realtime slice involved stays
  within `tolerance` of its solo time and every running realtime request still meets its
  deadline.
- Best-effort slices go last, the most complementary first (least predicted slowdown on the
  work they would join). One may start only if a realtime request arriving now could run
  beside it within tolerance, or it ends before the next expected realtime arrival: so
  best-effort work never stands in the way of the camera frame that is about to come.
- Optionally (`early_reject`), a request with a client deadline it can no longer meet even
  alone is answered at once instead of spending device time on it.
Slices missing from the profile get a cost-free guess (sm 1, mem 0.5, 1 ms): pessimistic on
sharing, so the policy degrades toward fifo rather than toward interference.
"""
from __future__ import annotations

from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.sched.state import Request, SchedState
from edgesched.types import Launch, Plan, PolicyName, Priority, SliceDemand

UNKNOWN = SliceDemand(sm=1.0, mem=0.5, duration_us=1000.0)


class Interference:
    name = PolicyName.INTERFERENCE.value

    def __init__(self, profile: Profile | None = None, tolerance: float = 1.10,
                 early_reject: bool = False):
        self.profile = profile
        self.predictor = profile.predictor if profile else Predictor()
        self.tolerance = tolerance
        self.early_reject = early_reject
        self._demands: dict[tuple[str, int], SliceDemand] = {}
        self._tail_s: dict[tuple[str, int], float] = {}   # solo seconds from slice i to the end

    def _demand(self, model: str, index: int) -> SliceDemand:
        key = (model, index)
        found = self._demands.get(key)
        if found is None:
            found = (self.profile.demand(model, index) if self.profile else None) or UNKNOWN
            self._demands[key] = found
        return found

    def _remaining_s(self, r: Request, from_slice: int | None = None) -> float:
        key = (r.model, r.next_slice if from_slice is None else from_slice)
        tail = self._tail_s.get(key)
        if tail is None:
            tail = sum(self._demand(r.model, i).duration_us
                       for i in range(key[1], r.num_slices)) / 1e6
            self._tail_s[key] = tail
        return tail

    def _deadline(self, r: Request) -> float:
        return r.slo_deadline_s if r.deadline_s is None else min(r.deadline_s, r.slo_deadline_s)

    def plan(self, state: SchedState, now_s: float) -> Plan:
        free = state.free_streams()
        if not free and not self.early_reject:
            return Plan()
        # (request, demand) of everything on the device once this plan's launches start.
        running = [(state.requests[rid], self._demand(l.model, l.slice_index))
                   for rid, l in state.running.items()]
        high = [s for s in free if s in state.high_priority_streams]
        normal = [s for s in free if s not in state.high_priority_streams]
        load: dict[tuple[str, int], int] = {}
        launches: list[Launch] = []
        rejects: list[int] = []
        waiting = list(state.waiting())
        if self.early_reject:
            # Only requests carrying a client deadline, and only when even running alone from
            # now on cannot meet it: the client asked to be told rather than served late.
            rejects = [r.id for r in waiting if r.deadline_s is not None
                       and now_s + self._remaining_s(r) > r.deadline_s]
            waiting = [r for r in waiting if r.id not in rejects]
        realtime = [r for r in waiting if r.priority is Priority.REALTIME]
        realtime.sort(key=lambda r: (self._deadline(r) - now_s - self._remaining_s(r), r.id))
        best_effort = [r for r in waiting if r.priority is not Priority.REALTIME]

        def fits(r: Request) -> bool:
            key = (r.model, r.next_slice)
            return load.get(key, state.slice_load(*key)) < state.models[r.model].instances

        def take(r: Request, stream: int) -> None:
            key = (r.model, r.next_slice)
            load[key] = load.get(key, state.slice_load(*key)) + 1
            launches.append(Launch(r.id, r.model, r.next_slice, stream))
            running.append((r, self._demand(r.model, r.next_slice)))

        for r in realtime:
            if not (high or normal) or not fits(r):
                continue
            if self._admits(running, r, now_s):
                take(r, (high or normal).pop(0))
        if state.only_high_priority_usable():
            normal += high     # one stream only, or the others hung: best effort may use it
        if not normal or not best_effort:
            return Plan(tuple(launches), tuple(rejects))
        # Requests of one (model, slice) look the same to the predictor: score each such key
        # once, and once a key is refused, skip it until the running set changes. A plan then
        # costs per distinct slice waiting, not per queued request.
        imposed: dict[tuple[str, int], float] = {}
        for r in best_effort:
            key = (r.model, r.next_slice)
            if key not in imposed:
                imposed[key] = self._imposed(running, r)
        refused: set[tuple[str, int]] = set()
        for r in sorted(best_effort, key=lambda r: (imposed[(r.model, r.next_slice)],
                                                    r.arrival_s, r.id)):
            if not normal:
                break
            key = (r.model, r.next_slice)
            if key in refused:
                continue
            if fits(r) and self._admits(running, r, now_s) and self._clears_realtime(
                    state, running, r, now_s):
                take(r, normal.pop(0))
                refused.clear()         # the running set changed: judge every key afresh
            else:
                refused.add(key)
        return Plan(tuple(launches), tuple(rejects))

    def _admits(self, running: list, r: Request, now_s: float) -> bool:
        """Starting r's next slice keeps every realtime co-runner (r included) within tolerance
        and every running realtime request on time."""
        if not running:
            return True
        group = [d for _, d in running] + [self._demand(r.model, r.next_slice)]
        slowdowns = self.predictor.slowdowns(group)
        members = [q for q, _ in running] + [r]
        # A realtime slice beside best-effort work only starts: best-effort admission already
        # kept such co-runs within tolerance, and slices are not preemptible, so waiting for
        # the best-effort slice to end would cost it more.
        only_best_effort = all(q.priority is not Priority.REALTIME for q, _ in running)
        for q, slowdown in zip(members, slowdowns):
            if q.priority is not Priority.REALTIME or (q is r and only_best_effort):
                continue
            if slowdown > self.tolerance:
                return False
            if q is not r and now_s + self._remaining_s(q, q.next_slice) * slowdown \
                    > self._deadline(q):
                return False
        return True

    def _imposed(self, running: list, r: Request) -> float:
        """How much starting r would slow the work already chosen (complementary = ~1)."""
        if not running:
            return 1.0
        group = [d for _, d in running] + [self._demand(r.model, r.next_slice)]
        return max(self.predictor.slowdowns(group)[:-1])

    def _clears_realtime(self, state: SchedState, running: list, r: Request,
                         now_s: float) -> bool:
        """A best-effort slice may start if any realtime model could start beside it within
        tolerance, or if it ends before that model's next expected request."""
        mine = self._demand(r.model, r.next_slice)
        group = [d for _, d in running] + [mine]
        ends_s = now_s + mine.duration_us / 1e6 * max(self.predictor.slowdowns(group))
        for model, info in state.models.items():
            if info.priority is not Priority.REALTIME:
                continue
            seen = state.arrivals.get(model)
            # Reserve room only for a stream that is live: a known period, and its last frame
            # within two periods. A never-seen or stopped camera must not starve best effort
            # (the price: the first frame of a new stream may meet a co-runner).
            if seen is None or seen[1] is None or now_s - seen[0] > 2.0 * seen[1]:
                continue
            if ends_s <= state.next_arrival_s(model):
                continue
            # Any of its slices may be the one that arrives (or continues) next.
            for i in range(info.num_slices):
                if self.predictor.slowdowns(group + [self._demand(model, i)])[-1] \
                        > self.tolerance:
                    return False
        return True
