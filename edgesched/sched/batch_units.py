"""Batches as units: the bookkeeping by which several requests run as one (lifecycle.py).

A unit is carried by its *head*, the request a policy launched: it stays in SchedState and
runs every slice, staged with the members' inputs concatenated along dim 0. The other
members leave the ready queues but stay admitted (queue depth and drain still count them)
until the head is answered: then each member gets the same outcome, and, when completed, its
own rows of the outputs and its own timings. A unit shares one deadline, its members'
earliest (the head's fields are set so), and its objective is its earliest member's: the
choice of members (batching.batch_size) made sure the predicted latency keeps them all.
Requests batch together only when admitted on the same model version (a reload's switch
makes a new generation) with the same input shapes but for dim 0 (batching.shape_key).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgesched.sched import batching
from edgesched.sched.state import Request, SchedState
from edgesched.types import Launch, ModelInfo, Priority

HOLD = "hold"            # form(): wait for company (batching.hold_until said so)
SCAN_FACTOR = 4          # queue entries looked at per row of the limit (mixed shapes skipped)


@dataclass
class Unit:
    members: list[Request]          # the head first, then in row order
    rows: list[int]                 # rows of each member
    inputs: list[Mapping]           # each member's own inputs (kept: `dissolve` needs them)
    own: tuple = (None, 0.0)        # the head's own (deadline_s, slo_s), before the unit's

    @property
    def total(self) -> int:
        return sum(self.rows)


class Batches:
    def __init__(self, latency: batching.BatchLatency | None = None):
        self.latency = latency or batching.BatchLatency()
        self._limits: dict[str, tuple[ModelInfo, int]] = {}   # model -> (info, max rows)
        self._generation: dict[str, int] = {}
        self._inputs: dict[int, Mapping] = {}      # admitted batchable request -> its inputs
        self._key: dict[int, tuple] = {}           # ... -> (model, generation, shapes but dim 0)
        self._rows: dict[int, int] = {}            # ... -> its rows
        self.units: dict[int, Unit] = {}           # head id -> its unit
        self.joined: dict[int, int] = {}           # member id (not a head) -> its head's id
        # Requests held back for company (out of their queues, so that policies plan other
        # work meanwhile; `release` puts them back when the wait ends): id -> until (s).
        self.holds: dict[int, float] = {}
        self._held: dict[int, Request] = {}
        self.off: set[str] = set()                 # models whose batches failed: never again
        # Some model may batch (limit() > 0). False: limit() is 0 for every model, which the
        # lifecycle asks per admission, launch and answer; a hint, recomputed whenever a
        # limit changes (set_models, turn_off), so never False while a model batches.
        self.active = False

    def set_models(self, models: Mapping[str, ModelInfo]) -> None:
        for name, info in models.items():
            known = self._limits.get(name)
            if known is None or known[0] is not info:
                self._generation[name] = self._generation.get(name, 0) + 1
                self._limits[name] = (info, batching.max_rows(info))
        for name in [n for n in self._limits if n not in models]:
            del self._limits[name]
        self._activity()

    def limit(self, model: str) -> int:
        known = self._limits.get(model)
        return 0 if known is None or model in self.off else known[1]

    def turn_off(self, model: str) -> None:
        """The model's batches failed: it batches no more."""
        self.off.add(model)
        self._activity()

    def _activity(self) -> None:
        self.active = any(self.limit(name) for name in self._limits)

    # --- a request's life ----------------------------------------------------------------
    def admitted(self, request: Request, inputs: Mapping) -> None:
        if not self.limit(request.model):
            return
        key = batching.shape_key(inputs)
        if key is None:
            return                       # inputs that disagree on dim 0: it runs alone
        rows, rest = key
        if rows is None:                 # synthetic: the model's own (opt) rows
            rows = _synthetic_rows(self._limits[request.model][0])
        self._inputs[request.id] = inputs
        # the model too: generations count per model, so two models' keys could match
        self._key[request.id] = (request.model, self._generation[request.model], rest)
        self._rows[request.id] = rows

    def rows(self, request_id: int) -> int | None:
        """Rows of an admitted batchable request not in a unit (None: not batchable)."""
        return self._rows.get(request_id)

    def held(self, model: str | None = None) -> list[Request]:
        """Requests held for company (out of their queues), of `model` or of every model."""
        return [r for r in self._held.values() if model is None or r.model == model]

    def forget(self, request_id: int) -> None:
        """The request was answered (or joined a unit that now carries its inputs)."""
        if self._rows:                   # (most models do not batch: this runs per answer)
            self._inputs.pop(request_id, None)
            self._key.pop(request_id, None)
            self._rows.pop(request_id, None)
        if self.holds:
            self.holds.pop(request_id, None)
            self._held.pop(request_id, None)

    def release(self, state: SchedState, now_s: float) -> None:
        """Held requests whose wait ended wait in their queues again (a policy launches them)."""
        for rid in [rid for rid, until in self.holds.items() if until <= now_s]:
            del self.holds[rid]
            state.requeue(self._held.pop(rid))

    def form(self, state: SchedState, launch: Launch, now_s: float) -> Unit | str | None:
        """What launching slice 0 of launch.request_id makes: a Unit of 2+ members, HOLD (do
        not launch it yet) or None (it runs alone)."""
        head = state.requests[launch.request_id]
        limit = self.limit(head.model)
        key = self._key.get(head.id)
        if key is None or not limit:
            return None
        realtime = head.priority is Priority.REALTIME
        rows_of = self._rows
        members, rows = [head], [rows_of[head.id]]
        total = rows[0]
        if self._held:                   # held for company: they come first, in queue order
            held = sorted((r for rid, r in self._held.items() if self._key.get(rid) == key
                           and (r.priority is Priority.REALTIME) == realtime),
                          key=lambda r: (r.urgency_s if realtime else r.arrival_s, r.id))
            for r in held:
                if total + rows_of[r.id] > limit:
                    break
                members.append(r)
                rows.append(rows_of[r.id])
                total += rows_of[r.id]
        queue = next((q for k, q in state.ready() if k == (head.model, 0, realtime)), None)
        if queue is not None and total < limit:
            entries = queue.by_urgency if realtime else queue.by_arrival
            for _, rid, r in entries[:SCAN_FACTOR * limit]:
                if r is head or self._key.get(rid) != key or rid in self.joined:
                    continue
                if total + rows_of[rid] > limit:
                    break
                members.append(r)
                rows.append(rows_of[rid])
                total += rows_of[rid]
        latency = self.latency.for_model(head.model)
        deadlines = [r.urgency_s for r in members]
        n = batching.batch_size(deadlines, rows, latency, now_s, limit)
        first = min(r.arrival_s for r in members[:n])
        until = batching.hold_until(first, self._wait_s(head.model), deadlines[:n],
                                    sum(rows[:n]), limit, latency, now_s)
        if until is not None:
            state._dequeue(head)         # still admitted: `release` or a batch takes it
            self.holds[head.id] = until
            self._held[head.id] = head
            return HOLD
        if n == 1:
            return None
        return Unit(members[:n], rows[:n], [self._inputs[r.id] for r in members[:n]])

    def _wait_s(self, model: str) -> float:
        batch = self._limits[model][0].batch
        return batch.wait_ms / 1e3 if batch is not None else 0.0

    def start(self, unit: Unit, state: SchedState) -> tuple[Mapping, tuple[int, ...]]:
        """The unit's head has started slice 0: the members leave their queues, the head takes
        the unit's deadline and objective. Returns (the head's new inputs, the ids of the
        members whose own staged copies are to be freed)."""
        head, others = unit.members[0], unit.members[1:]
        for m in others:
            state._dequeue(m)            # still admitted: answered with the head
            self.joined[m.id] = head.id
            self.holds.pop(m.id, None)
            self._held.pop(m.id, None)
        deadlines = [m.deadline_s for m in unit.members if m.deadline_s is not None]
        unit.own = (head.deadline_s, head.slo_s)
        head.deadline_s = min(deadlines) if deadlines else None
        head.slo_s = min(m.slo_deadline_s for m in unit.members) - head.arrival_s
        inputs = self._concatenated(unit)
        for m in unit.members:
            self.forget(m.id)
        self.units[head.id] = unit
        return inputs, tuple(m.id for m in others)

    def _concatenated(self, unit: Unit) -> dict[str, np.ndarray]:
        given = unit.inputs
        if given[0]:
            return {name: np.concatenate([g[name] for g in given]) for name in given[0]}
        info = self._limits[unit.members[0].model][0]
        return {spec.name: np.zeros((unit.total, *_opt(info, spec)[1:]), spec.dtype)
                for spec in info.inputs}

    def dissolve(self, head: Request, state: SchedState) -> Mapping:
        """Undo a unit whose staging the backend refused (a batch shape outside its engine's
        profile): the members wait again alone, the head runs alone (its inputs returned)."""
        unit = self.units.pop(head.id)
        head.deadline_s, head.slo_s = unit.own
        for m in unit.members[1:]:
            del self.joined[m.id]
            state.requeue(m)
        self.turn_off(head.model)
        return unit.inputs[0]


def _opt(info: ModelInfo, spec) -> tuple[int, ...]:
    given = info.shapes.get(spec.name)
    return given.opt if given is not None else tuple(d or 1 for d in spec.shape)


def _synthetic_rows(info: ModelInfo) -> int:
    spec = info.inputs[0] if info.inputs else None
    return _opt(info, spec)[0] if spec is not None and spec.shape else 1
