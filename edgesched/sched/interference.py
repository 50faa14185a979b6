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
queued request (`edgesched bench scheduler`). What a plan needs of a running launch (demand,
solo time left, deadline) is kept from the plan that launched it, and a launched slice joins
the set the next candidate is judged beside only when there is a next candidate.
"""
from __future__ import annotations

from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.sched.state import Request, SchedState
from edgesched.types import (
    EMPTY_PLAN,
    Launch,
    Plan,
    PolicyName,
    Priority,
    SliceDemand,
    make_launch,
    make_plan,
)

UNKNOWN = SliceDemand(sm=1.0, mem=0.5, duration_us=1000.0)
_MEMO_MAX = 50_000     # judgements; each a few hundred bytes
_ALONE = [1.0]         # the slowdowns of a slice that starts on an idle device
_REALTIME = Priority.REALTIME   # read once: an Enum member through its class is ~0.06 us


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
        # (model, slice, realtime) -> (that key, demand, realtime, tail): `_member`'s parts
        self._slices: dict[tuple[str, int, bool], tuple] = {}
        # Pure predictor judgements, kept across plans: the same few co-run sets recur step
        # after step. One _Judged per running set (its _Group.key), so a plan hashes the set
        # once and then only small per-slice keys. Cleared past _MEMO_MAX judgements, or when
        # the predictor is replaced.
        self._memo: dict[tuple, _Judged] = {}
        self._memo_size = 0
        self._memo_for: Predictor | None = None
        # Per state.models dict (a reload replaces it): model -> instances, and the realtime
        # models' (name, slices).
        self._models_of: tuple[object, dict[str, int], tuple[tuple[str, int], ...]] = (
            None, {}, ())
        # id(launch) -> (launch, its _Group member) for the launches running at the last
        # plan: most are still running at the next one.
        self._members: dict[int, tuple] = {}
        # When the last plan held best effort back for a request expected by then: if it has
        # not come, plan again (the engine reads this to bound its wait; None: no such time).
        self.wake_at_s: float | None = None

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

    def _member(self, r: Request, model: str, index: int) -> tuple:
        """What a _Group keeps of one slice on the device: (request, (model, slice,
        realtime), demand, realtime, solo seconds left from this slice, deadline s; 0.0 for
        best effort, whose deadlines a plan never checks)."""
        rt = r.priority is _REALTIME
        found = self._slices.get((model, index, rt))
        if found is None:
            found = self._slices[(model, index, rt)] = (
                (model, index, rt), self._demand(model, index), rt,
                self._tail(model, index, r.num_slices))
        key, demand, rt, tail = found
        if not rt:
            return (r, key, demand, rt, tail, 0.0)
        deadline_s = r.arrival_s + r.slo_s         # self._deadline(r), inline
        if r.deadline_s is not None and r.deadline_s < deadline_s:
            deadline_s = r.deadline_s
        return (r, key, demand, rt, tail, deadline_s)

    def _judged(self, group: _Group) -> _Judged:
        """The memo of judgements beside `group`'s slices (looked up once per group state)."""
        found = group.judged
        if found is None:
            found = self._memo.get(group.key)
            if found is None:
                found = self._memo[group.key] = _Judged()
            group.judged = found
        return found

    def plan(self, state: SchedState, now_s: float) -> Plan:
        self.wake_at_s = None
        free = state.free_streams()
        if not state.has_ready or (not free and not self.early_reject):
            return EMPTY_PLAN
        if self._memo_for is not self.predictor or self._memo_size > _MEMO_MAX:
            self._memo, self._memo_for, self._memo_size = {}, self.predictor, 0
        if self._models_of[0] is not state.models:
            models = state.models
            self._models_of = (models, {m: i.instances for m, i in models.items()},
                               tuple((m, i.num_slices) for m, i in models.items()
                                     if i.priority is Priority.REALTIME))
        instances_of = self._models_of[1]
        # The running slices' members, most of them kept from the last plan (or made when
        # this policy launched them), keyed by launch identity.
        members, last, parts = {}, self._members, []
        requests = state.requests
        for l in state.running.values():
            k = id(l)
            found = last.get(k)
            r = requests[l.request_id]
            if found is None or found[0] is not l or found[1][0] is not r:
                found = (l, self._member(r, l.model, l.slice_index))
            members[k] = found
            parts.append(found[1])
        self._members = members
        group = _Group(parts)
        high_set = state.high_priority_streams
        high, normal = [], []       # one loop, not two comprehensions (~0.4 us a plan)
        for s in free:
            (high if s in high_set else normal).append(s)
        launches: list[Launch] = []
        rejects: list[Request] = []
        # Only each ready queue's first few can launch (state.py): realtime ones by urgency
        # (slack = urgency - the queue's common remaining time), best-effort ones by arrival.
        realtime: list[tuple[float, int, Request]] = []    # (slack + now, id, request)
        best_effort: list[tuple] = []                      # (queue, how many or entries)
        n_free = len(free)
        # Slices that the predictor already refused beside this very running set: predictions
        # only grow as the plan adds co-runners, so they cannot start in this plan either.
        found = group.judged = self._memo.get(group.key)
        hopeless = found.hopeless if found is not None else ()
        early, loads, tails = self.early_reject, state.slice_loads, self._tail_s
        # The hot loop of a plan, once per ready queue: kept to plain attribute, dict and list
        # operations.
        for queue in state.ready_queues():
            if early and queue.by_deadline:
                rejects += self._rejects(queue, now_s)
            if hopeless and queue.key in hopeless:
                continue
            n = instances_of[queue.model] - loads.get(queue.slice_key, 0)
            if n <= 0:
                continue
            if n > n_free:
                n = n_free
            if not queue.realtime:
                if not rejects:
                    best_effort.append((queue, n))
                    continue
                entries = [e for e in queue.by_arrival[:n + len(rejects)]
                           if e[2] not in rejects][:n]
                if entries:
                    best_effort.append((queue, entries))
                continue
            if rejects:
                entries = [e for e in queue.by_urgency[:n + len(rejects)]
                           if e[2] not in rejects][:n]
                if not entries:
                    continue
            else:
                entries = queue.by_urgency[:n]
            tail = tails.get(queue.slice_key)
            if tail is None:
                tail = self._tail(queue.model, queue.index, entries[0][2].num_slices)
            if n == 1:
                u, i, r = entries[0]
                realtime.append((u - tail, i, r))
            else:
                realtime += [(u - tail, i, r) for u, i, r in entries]
        reject_ids = tuple(r.id for r in sorted(rejects, key=lambda r: r.order_key)) \
            if rejects else ()
        if not free:
            return make_plan((), reject_ids) if reject_ids else EMPTY_PLAN
        # Launches this plan made per (model, slice): they count against its instances.
        load: dict[tuple[str, int], int] = {}
        pending = None        # (request, stream): launched, not yet in `group`

        if realtime:
            if len(realtime) > 1:
                realtime.sort()  # least slack first; ids are unique: requests never compare
            # A refused slice stays refused as the plan adds co-runners: predictions only grow.
            refused_rt: set[tuple[str, int]] = set()
            for _, _, r in realtime:
                if not (high or normal):
                    break
                key = (r.model, r.next_slice)
                if key in refused_rt:
                    continue
                if load.get(key, loads.get(key, 0)) >= instances_of[r.model]:
                    continue
                if pending is not None:
                    self._join(group, *pending)
                    pending = None
                if self._admits(group, r, True, now_s) is not None:
                    load[key] = load.get(key, loads.get(key, 0)) + 1
                    pending = (r, (high or normal).pop(0), launches)
                else:
                    refused_rt.add(key)
        if state.only_high_priority_usable():
            normal += high     # one stream only, or the others hung: best effort may use it
        if normal and best_effort:
            if pending is not None:
                self._join(group, *pending)
                pending = None
            if len(best_effort) == 1 and best_effort[0][1] == 1:
                # The common plan: one best-effort candidate, no ranking needed.
                queue = best_effort[0][0]
                r = queue.by_arrival[0][2]
                key = queue.slice_key
                if load.get(key, loads.get(key, 0)) < instances_of[r.model]:
                    slowdowns = self._admits(group, r, False, now_s)
                    if slowdowns is not None and self._clears_realtime(state, group, r,
                                                                       slowdowns, now_s):
                        self._join(group, r, normal[0], launches, last=True)
            else:
                self._fill_best_effort(state, group, best_effort, normal, load, launches,
                                       now_s)
        elif pending is not None:
            self._join(group, *pending, last=True)
        return make_plan(tuple(launches), reject_ids) if launches or reject_ids else EMPTY_PLAN

    def _join(self, group: _Group, r: Request, stream: int, launches: list[Launch],
              last: bool = False) -> None:
        """Launch r's next slice on `stream`: into `launches`, its member kept for the next
        plan (when it runs) and, unless it is the plan's `last` launch, added to `group`."""
        launch = make_launch(r.id, r.model, r.next_slice, stream)
        launches.append(launch)
        member = self._member(r, r.model, r.next_slice)
        self._members[id(launch)] = (launch, member)
        if not last:
            group.add(member)

    def _fill_best_effort(self, state: SchedState, group: _Group, best_effort: list,
                          normal: list[int], load: dict, launches: list[Launch],
                          now_s: float) -> None:
        """Best-effort slices onto the `normal` streams, the least imposing first."""
        loads, instances_of = state.slice_loads, self._models_of[1]
        # Requests of one (model, slice) look the same to the predictor: score each queue
        # once, and once a key is refused, skip it until the running set changes.
        judged = self._judged(group) if group.members else None
        ranked = []
        for queue, entries in best_effort:
            imposed = 1.0 if judged is None else max(
                self._joined(group, judged, queue.key)[1][:-1])
            if entries.__class__ is int:
                entries = queue.by_arrival[:entries]
            ranked += [(imposed, a, i, r) for a, i, r in entries]
        ranked.sort()
        refused: set[tuple[str, int]] = set()
        pending = None
        for _, _, _, r in ranked:
            if not normal:
                break
            key = (r.model, r.next_slice)
            if key in refused:
                continue
            if pending is not None:
                self._join(group, *pending)
                pending = None
            used = load.get(key, loads.get(key, 0))
            if used < instances_of[r.model]:
                slowdowns = self._admits(group, r, False, now_s)
                if slowdowns is not None and self._clears_realtime(state, group, r, slowdowns,
                                                                   now_s):
                    load[key] = used + 1
                    pending = (r, normal.pop(0), launches)
                    refused.clear()     # the running set changed: judge every key afresh
                    continue
            refused.add(key)
        if pending is not None:
            self._join(group, *pending, last=True)

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

    def _joined(self, group: _Group, judged: _Judged, key: tuple) -> tuple[bool, list[float]]:
        """(every realtime slice within tolerance, each slowdown) once the slice `key`
        (model, slice, realtime) joins `group`: a pure function of the slices involved, so
        memoised across plans (`judged` is the group's record)."""
        found = judged.joined.get(key)
        if found is None:
            model, index, realtime = key
            slowdowns = self.predictor.slowdowns(group.demands + (self._demand(model, index),))
            tol = self.tolerance
            # A realtime slice beside best-effort work only starts: best-effort admission
            # already kept such co-runs within tolerance, and slices are not preemptible, so
            # waiting for the best-effort slice to end would cost it more.
            ok = all(s <= tol for s, rt in zip(slowdowns, group.realtime) if rt) and (
                not realtime or not any(group.realtime) or slowdowns[-1] <= tol)
            found = judged.joined[key] = (ok, slowdowns)
            self._memo_size += 1
            if not ok:
                judged.hopeless.add(key)
        return found

    def _admits(self, group: _Group, r: Request, realtime: bool,
                now_s: float) -> list[float] | None:
        """Starting r's next slice keeps every realtime co-runner (r included) within tolerance
        and every running realtime request on time: the predicted slowdowns with it (the
        last is its own), or None if not."""
        if not group.members:
            return _ALONE
        # Once or twice per plan: the memo's hits (_judged, _joined, deadline_checks) inline.
        judged = group.judged
        if judged is None:
            judged = self._judged(group)
        key = (r.model, r.next_slice, realtime)
        found = judged.joined.get(key)
        ok, slowdowns = found if found is not None else self._joined(group, judged, key)
        if not ok:
            return None
        checks = group._checks
        if checks is None:
            checks = group.deadline_checks()
        for i, remaining_s, deadline_s in checks:
            if now_s + remaining_s * slowdowns[i] > deadline_s:
                return None
        return slowdowns

    def _clears_realtime(self, state: SchedState, group: _Group, r: Request,
                         slowdowns: list[float], now_s: float) -> bool:
        """A best-effort slice may start if any realtime model could start beside it within
        tolerance, or if it ends before that model's next expected request. `slowdowns`:
        the group's with it (`_admits`)."""
        mine = self._demands.get((r.model, r.next_slice)) or self._demand(r.model, r.next_slice)
        ends_s = now_s + mine.duration_us / 1e6 * max(slowdowns)
        gaps = state.gaps
        for model, num_slices in self._models_of[2]:
            seen = gaps.get(model)
            # Reserve room only for a live source: one with a history whose last frame is
            # within twice its longest recent gap (sched/arrivals.py). A never-seen or stopped
            # camera must not starve best effort (the price: the first frame of a new stream
            # may meet a co-runner).
            next_s = None if seen is None else seen.next_s(now_s)
            if next_s is None or ends_s <= next_s:
                continue
            judged = self._judged(group)
            memo_key = (r.model, r.next_slice, model)
            clear = judged.clear.get(memo_key)
            if clear is None:
                # Any of its slices may be the one that arrives (or continues) next.
                with_mine = group.demands + (mine,)
                clear = judged.clear[memo_key] = all(
                    self.predictor.slowdowns(with_mine + (self._demand(model, i),))[-1]
                    <= self.tolerance for i in range(num_slices))
                self._memo_size += 1
            if not clear:
                # Refused for now; if that request has not come by `changes_s`, the estimate moves
                # on (a later gap, or the source stopped): plan again then, even if nothing
                # else happens (the engine waits no longer than `wake_at_s`).
                again_s = seen.changes_s(now_s)
                if self.wake_at_s is None or again_s < self.wake_at_s:
                    self.wake_at_s = again_s
                return False
        return True


class _Judged:
    """The predictor's judgements beside one running set (a _Group.key): slice (model,
    slice, realtime) -> (ok, slowdowns); the slices refused; (model, slice, realtime model)
    -> whether that realtime model could still start beside it."""

    __slots__ = ("joined", "hopeless", "clear")

    def __init__(self) -> None:
        self.joined: dict[tuple, tuple[bool, list[float]]] = {}
        self.hopeless: set[tuple] = set()
        self.clear: dict[tuple, bool] = {}


class _Group:
    """The slices on the device once a plan's launches so far start: their requests, demands,
    realtime flags, and `key`, the tuple of (model, slice, realtime) that memos are keyed by
    (bools, not Priority: an Enum hashes in Python code); `judged`, the memo for that key,
    once looked up. Tuples: most plans build one and never add to it."""

    __slots__ = ("members", "demands", "realtime", "key", "judged", "_parts", "_checks")

    def __init__(self, members: list[tuple] = ()) -> None:
        """members: Interference._member's tuples."""
        self._parts = members
        if members:
            (self.members, self.key, self.demands, self.realtime, _,
             _) = zip(*members)
        else:
            self.members = self.key = self.demands = self.realtime = ()
        self.judged: _Judged | None = None
        self._checks: list[tuple[int, float, float]] | None = None

    def deadline_checks(self) -> list[tuple[int, float, float]]:
        """(position, solo seconds left, deadline s) of each realtime member."""
        if self._checks is None:
            self._checks = [(i, m[4], m[5]) for i, m in enumerate(self._parts) if m[3]]
        return self._checks

    def add(self, member: tuple) -> None:
        self._parts = (*self._parts, member)
        self.members += (member[0],)
        self.key += (member[1],)
        self.demands += (member[2],)
        self.realtime += (member[3],)
        self.judged = self._checks = None
