"""A request's life from admission to answer, as data: the engine carries it out.

`Lifecycle` owns the scheduler state (`SchedState`), the per-model circuit breaker
(`Health`), the deadline and launch-timeout heaps. Its two transitions take what happened
and return what to do about it, touching no device:
- `launched(plan, now)`: a policy's plan is accepted; the launches to start and the early
  rejects to answer;
- `update(completions, now)`: finished slices read (requeue, done with timings, late,
  failed) and launch timeouts enforced.
`intake(submissions, now)` comes first in each step: new submissions admitted (or refused),
deadlines that passed enforced, and, when every stream is held by a hung launch, the waiting
requests failed. All three return an `Update` (sched/updates.py): requests to stage, launches
to start, answers to send (each saying whether its buffers are to be fetched, released or left
to a hung launch), buffers of ended stuck launches to release, and notices to log.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Iterable, Mapping

from edgesched.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    Overloaded,
    RequestError,
    ServerError,
)
from edgesched.sched.batch_units import HOLD, Batches
from edgesched.sched.batching import BatchLatency
from edgesched.sched.health import Health, signature
from edgesched.sched.state import Request, SchedState
from edgesched.sched.updates import NOTHING, Answer, Buffers, Outcome, Update, make_timings
from edgesched.types import Completion, ModelInfo, Plan, Priority, Timings

# Read once per request: an Enum member read through its class costs ~0.1 us (CPython 3.11).
_COMPLETED, _FETCH = Outcome.COMPLETED, Buffers.FETCH
_tuple_new = tuple.__new__


@dataclass(frozen=True)
class Submission:
    model: str                           # must be a loaded model (the caller checked)
    inputs: Mapping                      # name -> array, validated against the model's specs
    arrival_s: float                     # engine clock seconds
    deadline_s: float | None = None      # absolute, engine clock seconds
    priority: Priority | None = None     # None: the model's own class
    reply_to: object = None


class Lifecycle:
    def __init__(self, models: Mapping[str, ModelInfo], num_streams: int, *, queue_depth: int,
                 launch_timeout_s: float | None = None, health: Health | None = None,
                 batch_latency: BatchLatency | None = None):
        """batch_latency: predicted solo time per batch size (the profile's), for models with
        `batch:` configured."""
        self.models = dict(models)
        self.state = SchedState(self.models, num_streams)
        self.health = health or Health(self.models, unhealthy_after=3, retry_s=5.0)
        self.queue_depth = queue_depth
        # A launch running longer than this fails its request; None: launches never time out.
        self.launch_timeout_s = launch_timeout_s
        self._ids = itertools.count(1)
        self._deadlines: list[tuple[float, int]] = []          # heap of (deadline s, id)
        self._timeouts: list[tuple[float, int, int]] = []      # heap of (give up s, id, slice)
        self._shapes: dict[int, tuple] = {}     # admitted request id -> its input signature
        self.batches = Batches(batch_latency)
        self.batches.set_models(self.models)

    def set_models(self, models: Mapping[str, ModelInfo]) -> None:
        """A reload's model set; health entries follow (new ones healthy)."""
        self.models = dict(models)
        self.state.set_models(self.models)
        self.health.set_models(self.models)
        self.batches.set_models(self.models)

    # --- queries --------------------------------------------------------------------------
    def wait_s(self, now: float, max_wait_s: float) -> float:
        """How long the engine may sleep: until the next deadline or launch timeout."""
        timeouts, deadlines = self._timeouts, self._deadlines
        while timeouts and self._ended(timeouts[0]):    # launches that ended in time
            heapq.heappop(timeouts)
        if deadlines:
            max_wait_s = min(max_wait_s, max(deadlines[0][0] - now, 0.0))
        if timeouts:
            max_wait_s = min(max_wait_s, max(timeouts[0][0] - now, 0.0))
        holds = self.batches.holds
        if holds:                         # a short batch waiting for company: its wait's end
            max_wait_s = min(max_wait_s, max(min(holds.values()) - now, 0.0))
        return max_wait_s

    def batched(self, request_id: int) -> bool:
        """The request runs a batch of several (its run times are not a lone request's)."""
        return request_id in self.batches.units

    # --- transitions ----------------------------------------------------------------------
    def intake(self, submissions: Iterable[Submission], now: float) -> Update:
        if not submissions and self._nothing_due(now):
            return NOTHING                    # most steps: nothing arrived, nothing is due
        out = Update()
        for sub in submissions:
            self._admit(out, sub, now)
        if self.batches.holds:
            self.batches.release(self.state, now)
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._expire(out, now)
        if self.state.stuck and len(self.state.stuck) == self.state.num_streams:
            self._fail_waiting(out, None, ServerError(
                "no stream can run the request: every stream is held by a slice that overran "
                "the launch timeout"))
        return out

    def _nothing_due(self, now: float) -> bool:
        """intake() with no submissions would do nothing: no held batch to release, no
        deadline passed, no hung launch."""
        deadlines = self._deadlines
        return not (self.batches.holds or self.state.stuck
                    or (deadlines and deadlines[0][0] <= now))

    def start_alone(self, plan: Plan, now: float) -> bool:
        """`launched` for the common plan (launches alone: no rejects, no batching, no launch
        timeouts), whose Update would hold the plan's launches only: they start in the state,
        and the caller launches `plan.launches` as they are. False (nothing done) for any
        other plan: call `launched`."""
        if plan.rejects or self.batches.active or self.launch_timeout_s is not None:
            return False
        start = self.state.start
        for launch in plan.launches:
            start(launch, now)
        return True

    def launched(self, plan: Plan, now: float) -> Update:
        out = Update()
        if self.start_alone(plan, now):
            out.launches.extend(plan.launches)
            return out
        for rid in plan.rejects:
            request = self.state.requests[rid]
            self._fail(out, request, DeadlineExceeded(
                f"model {request.model!r}: the deadline cannot be met (rejected early)"),
                Outcome.EXPIRED)
        batches = self.batches
        for launch in plan.launches:
            unit = None
            if batches.active and launch.slice_index == 0 and batches.limit(launch.model):
                if launch.request_id in batches.joined:
                    continue                  # it joined a batch launched earlier in this plan
                unit = batches.form(self.state, launch, now)
                if unit is HOLD:
                    continue
            self.state.start(launch, now)
            if unit is not None:
                head = self.state.requests[launch.request_id]
                inputs, others = batches.start(unit, self.state)
                self._shapes[head.id] = signature(inputs)
                if head.deadline_s is not None:
                    heapq.heappush(self._deadlines, (head.deadline_s, head.id))
                out.batches.append((head, inputs, others))
            if self.launch_timeout_s is not None:
                heapq.heappush(self._timeouts, (now + self.launch_timeout_s,
                                                launch.request_id, launch.slice_index))
            out.launches.append(launch)
        return out

    def unbatch(self, head: Request, error: RequestError) -> tuple[Mapping, str]:
        """The backend refused a batch's inputs when staging them: the head runs alone (its
        own inputs returned, to stage instead), the other members wait again, and the model
        batches no more. Also returns the warning to log."""
        rows = self.batches.units[head.id].total
        alone = self.batches.dissolve(head, self.state)
        self._shapes[head.id] = signature(alone)
        return alone, (f"model {head.model!r}: a batch of {rows} rows was refused ({error}); "
                       "batching is off for this model from now on")

    def refused(self, request: Request, error: RequestError) -> Update:
        """The backend refused an admitted request's inputs when staging them (a shape outside
        the engine's profile): answered at once, and the model stays healthy for the others."""
        out = Update()
        self.state.retire(request)
        self._answer(out, Answer(request, Outcome.INVALID, Buffers.RELEASE, error))
        return out

    def update(self, completions: Iterable[Completion], now: float) -> Update:
        timeouts = self._timeouts
        if not completions and not (timeouts and timeouts[0][0] <= now):
            return NOTHING                    # a wait that ended with nothing done
        out = Update()
        for c in completions:
            self._complete(out, c, now)
        if timeouts:
            self._time_out(out, now)
        return out

    def abort_all(self, submissions: Iterable[Submission], error: RequestError,
                  now: float) -> Update:
        """Answer everything queued, running or still arriving with `error` (terminal)."""
        out = Update()
        for sub in submissions:
            self._admit(out, sub, now)
        for request in list(self.state.requests.values()):
            if request.id in self.batches.joined or request.id not in self.state.requests:
                continue                      # answered with its batch's head
            self.state.running.pop(request.id, None)
            self._fail(out, request, error, Outcome.FAILED)
        return out

    # --- admission ------------------------------------------------------------------------
    def _admit(self, out: Update, sub: Submission, now: float) -> None:
        model, state = sub.model, self.state
        info = self.models[model]
        request = Request(next(self._ids), model, sub.priority or info.priority,
                          sub.arrival_s, info.slo_ms / 1e3, info.num_slices, sub.deadline_s,
                          sub.reply_to)
        stuck = bool(state.stuck) and any(launch.model == model
                                          for launch in state.stuck.values())
        if not self.health.admit(model, now, stuck):
            refusal = ModelUnavailable(self.health.describe(model)), Outcome.FAILED
        elif state.pending(model) >= self.queue_depth:
            refusal = Overloaded(f"model {model!r}: {self.queue_depth} requests already "
                                 "queued"), Outcome.REJECTED
        elif sub.deadline_s is not None and sub.deadline_s <= now:
            refusal = DeadlineExceeded(f"model {model!r}: deadline passed before the "
                                       "request was queued"), Outcome.EXPIRED
        else:
            inputs = sub.inputs
            pending = state.admit(request)
            self._shapes[request.id] = signature(inputs) if inputs else ()
            out.staged.append((request, inputs))
            if self.batches.active:
                self.batches.admitted(request, inputs)
            out.depths.append((model, pending))
            if request.deadline_s is not None:
                heapq.heappush(self._deadlines, (request.deadline_s, request.id))
            return
        out.answers.append(Answer(request, refusal[1], Buffers.NONE, refusal[0]))

    def _expire(self, out: Update, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            request = self.state.requests.get(rid)
            # (a batch's members expire with its head, at the unit's deadline: batch_units.py)
            if request is not None and rid not in self.state.running and \
                    request.deadline_s is not None and request.deadline_s <= now and \
                    rid not in self.batches.joined:
                self._fail(out, request, DeadlineExceeded(
                    f"model {request.model!r}: deadline passed after {request.next_slice} of "
                    f"{request.num_slices} slices"), Outcome.EXPIRED)

    # --- completions ----------------------------------------------------------------------
    def _complete(self, out: Update, c: Completion, now: float) -> None:
        state, launch = self.state, c.launch
        running = state.running.get(launch.request_id)
        if running is not launch and running != launch:    # `is`: skips a dataclass __eq__
            if state.unstick(launch):        # a launch that overran has ended
                out.notices.append(("warning", (
                    f"stream {launch.stream} is free again: model {launch.model!r} slice "
                    f"{launch.slice_index} ended {c.finished_s - c.started_s:.1f} s after "
                    "it started")))
                out.freed.append(launch.request_id)
            else:
                out.notices.append(("error", "ignoring a completion for a launch the engine "
                                             f"did not start: {launch}"))
            return
        request = state.finish(launch, c.finished_s - c.started_s)
        if c.error is not None:
            self._launch_failed(out, c, request, now)
            return
        more = request.next_slice < request.num_slices
        deadline = request.deadline_s
        # The last slice counts when it finished; a request with slices left cannot meet a
        # deadline that has passed by now (its heap entry may be gone: it was running).
        if deadline is not None and (now >= deadline if more else c.finished_s > deadline):
            self._fail(out, request, DeadlineExceeded(
                f"model {request.model!r}: deadline passed while running (slice "
                f"{request.next_slice} of {request.num_slices} done)"), Outcome.EXPIRED)
        elif more:
            state.requeue(request)
        else:
            self._completed(out, request, c.finished_s)

    def _completed(self, out: Update, request: Request, finished_s: float) -> None:
        """Its last slice finished in time and without error: answered with its timings."""
        pending = self.state.retire(request)
        arrival, model, rid = request.arrival_s, request.model, request.id
        timings = make_timings((request.first_launch_s - arrival) * 1e3,
                               request.device_s * 1e3, (finished_s - arrival) * 1e3)
        batches = self.batches
        if batches.active and batches.limit(model):
            unit = batches.units.get(request.id)
            rows = unit.total if unit is not None else batches.rows(request.id)
            if rows:
                batches.latency.observe(model, rows, request.device_s)
        if self.health.completed(model, self._shapes.get(rid)):
            out.notices.append(("warning", f"model {model!r} is healthy again"))
        # Answer(request, _COMPLETED, _FETCH, None, timings) without the NamedTuple's
        # Python-level __new__ (once per completed request): the same value.
        answer = _tuple_new(Answer, (request, _COMPLETED, _FETCH, None, timings, None))
        if batches.units:
            self._answer(out, answer)
            return
        out.answers.append(answer)              # _answer's path for a lone request, inline
        self._shapes.pop(rid, None)
        batches.forget(rid)
        out.depths.append((model, pending))

    def _launch_failed(self, out: Update, c: Completion, request: Request, now: float) -> None:
        """Its slice failed: the batch's fault, the inputs', or the model's (in that order)."""
        index = c.launch.slice_index
        unit = self.batches.units.get(request.id) if self.batches.units else None
        if unit is not None:
            # The batch's fault, not its members' nor the model's: no health counted.
            self.batches.turn_off(request.model)
            self._fail(out, request, ServerError(
                f"model {request.model!r} slice {index} failed on a batch of "
                f"{unit.total} rows: {c.error}; batching is off for this model from now on"),
                Outcome.FAILED)
        elif c.rejected and self.health.blames_inputs(request.model,
                                                      self._shapes.get(request.id)):
            self.health.rejected(request.model, c.error)
            self._fail(out, request, InvalidInput(
                f"model {request.model!r} slice {index} refused input shapes it "
                f"has never run: {c.error}"), Outcome.INVALID)
        else:
            self._fail(out, request, ServerError(
                f"model {request.model!r} slice {index} failed: {c.error}"), Outcome.FAILED)
            self._model_failed(out, request.model, f"slice {index}: {c.error}", now)

    def _time_out(self, out: Update, now: float) -> None:
        """Answer requests whose launch overran the timeout; their streams stay held."""
        while self._timeouts and self._timeouts[0][0] <= now:
            entry = heapq.heappop(self._timeouts)
            if self._ended(entry):
                continue
            _, rid, index = entry
            launch = self.state.running[rid]
            request = self.state.abandon(rid)
            what = (f"slice {index} ran longer than the launch timeout of "
                    f"{self.launch_timeout_s:g} s")
            out.notices.append(("error", f"model {request.model!r}: {what}; stream "
                                         f"{launch.stream} is held until it ends"))
            self._answer(out, Answer(request, Outcome.FAILED, Buffers.HELD, ServerError(
                f"model {request.model!r} {what}")))
            self._model_failed(out, request.model, what, now, timed_out=True)

    def _ended(self, timeout: tuple[float, int, int]) -> bool:
        launch = self.state.running.get(timeout[1])
        return launch is None or launch.slice_index != timeout[2]

    # --- failures -------------------------------------------------------------------------
    def _model_failed(self, out: Update, model: str, error: str, now: float,
                      timed_out: bool = False) -> None:
        if self.health.failed(model, error, now, timed_out):
            out.notices.append(("error", self.health.describe(model)))
            self._fail_waiting(out, model, ModelUnavailable(self.health.describe(model)))

    def _fail_waiting(self, out: Update, model: str | None, error: RequestError) -> None:
        """Fail the waiting (not running) requests of `model`, or of every model if None."""
        state = self.state
        waiting = list(state.waiting() if model is None else state.waiting_for(model))
        if self.batches.holds:           # held for company: waiting too, out of their queues
            waiting += self.batches.held(model)
        for request in waiting:
            self._fail(out, request, error, Outcome.FAILED)

    def _fail(self, out: Update, request: Request, error: RequestError,
              outcome: Outcome) -> None:
        self.state.retire(request)
        self._answer(out, Answer(request, outcome, Buffers.RELEASE, error))

    def _answer(self, out: Update, answer: Answer) -> None:
        request, batches = answer.request, self.batches
        unit = batches.units.pop(request.id, None) if batches.units else None
        if unit is not None:
            self._answer_members(out, answer, unit)
            return
        out.answers.append(answer)
        self._shapes.pop(request.id, None)
        batches.forget(request.id)
        out.depths.append((request.model, self.state.pending(request.model)))

    def _answer_members(self, out: Update, answer: Answer, unit) -> None:
        """A batch's head was answered: every member is, alike; completed ones each with its
        rows of the outputs and its own times (its own arrival, the batch's launch and end)."""
        head, first, t = unit.members[0], 0, answer.timings
        for member, rows in zip(unit.members, unit.rows):
            if member is not head:
                del self.batches.joined[member.id]
                self.state.retire(member)
            if answer.outcome is Outcome.COMPLETED:
                ahead_ms = (member.arrival_s - head.arrival_s) * 1e3   # <0: it came first
                own = Answer(member, answer.outcome, Buffers.FETCH, timings=Timings(
                    t.queue_ms - ahead_ms, t.device_ms, t.total_ms - ahead_ms),
                    part=(head.id, first, first + rows, unit.total))
            else:
                own = Answer(member, answer.outcome,
                             answer.buffers if member is head else Buffers.NONE, answer.error)
            first += rows
            self._answer(out, own)
