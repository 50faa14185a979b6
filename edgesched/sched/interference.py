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

Cost: a plan looks at each ready queue's first few requests only (state.py), and keeps the
predictor's judgements, pure functions of the (model, slice, realtime) set involved, across
plans; a slice refused beside a running set is skipped whenever that set runs again (a
prediction only grows with co-runners). So it costs per distinct ready slice, never per
queued request (`edgesched bench scheduler`).
"""
from __future__ import annotations

from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.sched.state import Request, SchedState
from edgesched.types import Launch, Plan, PolicyName, Priority, SliceDemand

UNKNOWN = SliceDemand(sm=1.0, mem=0.5, duration_us=1000.0)
_MEMO_MAX = 50_000     # entries; each a few hundred bytes


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
        # Pure predictor judgements keyed by the slices involved (see `_joined`), kept across
        # plans: the same few co-run sets recur step after step. Cleared past _MEMO_MAX
        # entries, or when the predictor is replaced.
        self._memo: dict[tuple, object] = {}
        self._memo_for: Predictor | None = None
        self._instances: tuple[object, dict[str, int]] = (None, {})   # (models, instances)

    def _demand(self, model: str, index: int) -> SliceDemand:
        key = (model, index)
        found = self._demands.get(key)
        if found is None:
            found = (self.profile.demand(model, index) if self.profile else None) or UNKNOWN
            self._demands[key] = found
        return found

    def _remaining_s(self, r: Request, from_slice: int | None = None) -> float:
        return self._tail(r.model, r.next_slice if from_slice is None else from_slice,
                          r.num_slices)

    def _tail(self, model: str, index: int, num_slices: int) -> float:
        """Solo seconds from slice `index` of `model` to its end."""
        tail = self._tail_s.get((model, index))
        if tail is None:
            tail = sum(self._demand(model, i).duration_us for i in range(index, num_slices)) / 1e6
            self._tail_s[(model, index)] = tail
        return tail

    def _deadline(self, r: Request) -> float:
        return r.slo_deadline_s if r.deadline_s is None else min(r.deadline_s, r.slo_deadline_s)

    def plan(self, state: SchedState, now_s: float) -> Plan:
        free = state.free_streams()
        if not state.has_ready or (not free and not self.early_reject):
            return Plan()
        if self._memo_for is not self.predictor or len(self._memo) > _MEMO_MAX:
            self._memo, self._memo_for = {}, self.predictor
        group = _Group()
        for rid, l in state.running.items():
            r = state.requests[rid]
            group.add(r, l.model, l.slice_index, self._demand(l.model, l.slice_index))
        high = [s for s in free if s in state.high_priority_streams]
        normal = [s for s in free if s not in state.high_priority_streams]
        launches: list[Launch] = []
        rejects: list[Request] = []
        # Only each ready queue's first few can launch (state.py): realtime ones by urgency
        # (slack = urgency - the queue's common remaining time), best-effort ones by arrival.
        realtime: list[tuple[float, int, Request]] = []    # (slack + now, id, request)
        best_effort: list[tuple[float, int, Request]] = []   # (arrival, id, request)
        n_free = len(free)
        if self._instances[0] is not state.models:
            self._instances = (state.models, {m: i.instances for m, i in state.models.items()})
        instances_of = self._instances[1]
        # Slices that the predictor already refused beside this very running set: predictions
        # only grow as the plan adds co-runners, so they cannot start in this plan either.
        hopeless = self._memo.get(("hopeless", group.key), ())
        early, loads, tails = self.early_reject, state.slice_loads, self._tail_s
        # The hot loop of a plan, once per ready queue: kept to plain dict and list operations.
        for queue_key, queue in state.ready():
            if early and queue.by_deadline:
                rejects += self._rejects(queue, now_s)
            if queue_key in hopeless:
                continue
            model, index, rt = queue_key
            n = instances_of[model] - loads.get(queue_key[:2], 0)
            if n <= 0:
                continue
            if n > n_free:
                n = n_free
            if rejects:
                n_heads = n + len(rejects)
                entries = queue.by_urgency[:n_heads] if rt else queue.by_arrival[:n_heads]
                entries = [e for e in entries if e[2] not in rejects][:n]
            else:
                entries = queue.by_urgency[:n] if rt else queue.by_arrival[:n]
            if not entries:
                continue
            if rt:
                tail = tails.get(queue_key[:2])
                if tail is None:
                    tail = self._tail(model, index, entries[0][2].num_slices)
                realtime += [(u - tail, i, r) for u, i, r in entries]
            else:
                best_effort += entries
        reject_ids = tuple(r.id for r in sorted(rejects, key=lambda r: r.order_key))
        if not free:
            return Plan((), reject_ids)
        load: dict[tuple[str, int], int] = {}

        def fits(r: Request) -> bool:
            key = (r.model, r.next_slice)
            return load.get(key, state.slice_load(*key)) < state.models[r.model].instances

        def take(r: Request, stream: int) -> None:
            key = (r.model, r.next_slice)
            load[key] = load.get(key, state.slice_load(*key)) + 1
            launches.append(Launch(r.id, r.model, r.next_slice, stream))
            group.add(r, r.model, r.next_slice, self._demand(r.model, r.next_slice))

        if realtime:
            realtime.sort()      # least slack first; ids are unique, so requests never compare
            # A refused slice stays refused as the plan adds co-runners: predictions only grow.
            refused_rt: set[tuple[str, int]] = set()
            for _, _, r in realtime:
                if not (high or normal):
                    break
                key = (r.model, r.next_slice)
                if key in refused_rt or not fits(r):
                    continue
                if self._admits(group, r, now_s):
                    take(r, (high or normal).pop(0))
                else:
                    refused_rt.add(key)
        if state.only_high_priority_usable():
            normal += high     # one stream only, or the others hung: best effort may use it
        if not normal or not best_effort:
            return Plan(tuple(launches), reject_ids)
        # Requests of one (model, slice) look the same to the predictor: score each such key
        # once, and once a key is refused, skip it until the running set changes.
        imposed: dict[tuple[str, int], float] = {}
        for _, _, r in best_effort:
            key = (r.model, r.next_slice)
            if key not in imposed:
                imposed[key] = self._imposed(group, r)
        refused: set[tuple[str, int]] = set()
        for _, _, _, r in sorted((imposed[(r.model, r.next_slice)], a, i, r)
                                 for a, i, r in best_effort):
            if not normal:
                break
            key = (r.model, r.next_slice)
            if key in refused:
                continue
            if fits(r) and self._admits(group, r, now_s) and self._clears_realtime(
                    state, group, r, now_s):
                take(r, normal.pop(0))
                refused.clear()         # the running set changed: judge every key afresh
            else:
                refused.add(key)
        return Plan(tuple(launches), reject_ids)

    def _rejects(self, queue, now_s: float) -> list[Request]:
        """Requests carrying a client deadline that even running alone from now on cannot
        meet: the client asked to be told rather than served late. Earliest deadlines first,
        so the scan stops at the first one that can still be met."""
        out = []
        for deadline_s, _, r in queue.by_deadline:
            if now_s + self._remaining_s(r) <= deadline_s:
                break
            out.append(r)
        return out

    def _joined(self, group: _Group, r: Request) -> tuple[bool, list[float]]:
        """(every realtime slice within tolerance, each slowdown) once r's next slice joins
        `group`: a pure function of the slices involved, so memoised across plans."""
        realtime = r.priority is Priority.REALTIME
        memo_key = (group.key, r.model, r.next_slice, realtime)
        found = self._memo.get(memo_key)
        if found is None:
            slowdowns = self.predictor.slowdowns(
                group.demands + [self._demand(r.model, r.next_slice)])
            tol = self.tolerance
            # A realtime slice beside best-effort work only starts: best-effort admission
            # already kept such co-runs within tolerance, and slices are not preemptible, so
            # waiting for the best-effort slice to end would cost it more.
            ok = all(s <= tol for s, rt in zip(slowdowns, group.realtime) if rt) and (
                not realtime or not any(group.realtime) or slowdowns[-1] <= tol)
            found = self._memo[memo_key] = (ok, slowdowns)
            if not ok:
                hopeless = self._memo.setdefault(("hopeless", group.key), set())
                hopeless.add((r.model, r.next_slice, realtime))
        return found

    def _admits(self, group: _Group, r: Request, now_s: float) -> bool:
        """Starting r's next slice keeps every realtime co-runner (r included) within tolerance
        and every running realtime request on time."""
        if not group.members:
            return True
        ok, slowdowns = self._joined(group, r)
        if not ok:
            return False
        for q, rt, slowdown in zip(group.members, group.realtime, slowdowns):
            if rt and now_s + self._remaining_s(q) * slowdown > self._deadline(q):
                return False
        return True

    def _imposed(self, group: _Group, r: Request) -> float:
        """How much starting r would slow the work already chosen (complementary = ~1)."""
        if not group.members:
            return 1.0
        return max(self._joined(group, r)[1][:-1])

    def _clears_realtime(self, state: SchedState, group: _Group, r: Request,
                         now_s: float) -> bool:
        """A best-effort slice may start if any realtime model could start beside it within
        tolerance, or if it ends before that model's next expected request."""
        mine = self._demand(r.model, r.next_slice)
        slowdowns = self._joined(group, r)[1] if group.members else [1.0]
        ends_s = now_s + mine.duration_us / 1e6 * max(slowdowns)
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
            memo_key = (group.key, r.model, r.next_slice, model)
            clear = self._memo.get(memo_key)
            if clear is None:
                # Any of its slices may be the one that arrives (or continues) next.
                with_mine = group.demands + [mine]
                clear = self._memo[memo_key] = all(
                    self.predictor.slowdowns(with_mine + [self._demand(model, i)])[-1]
                    <= self.tolerance for i in range(info.num_slices))
            if not clear:
                return False
        return True


class _Group:
    """The slices on the device once a plan's launches so far start: their requests, demands,
    realtime flags, and `key`, the tuple of (model, slice, realtime) that memos are keyed by
    (bools, not Priority: an Enum hashes in Python code)."""

    __slots__ = ("members", "demands", "realtime", "key")

    def __init__(self) -> None:
        self.members: list[Request] = []
        self.demands: list[SliceDemand] = []
        self.realtime: list[bool] = []
        self.key: tuple = ()

    def add(self, r: Request, model: str, index: int, demand: SliceDemand) -> None:
        rt = r.priority is Priority.REALTIME
        self.members.append(r)
        self.demands.append(demand)
        self.realtime.append(rt)
        self.key += ((model, index, rt),)
