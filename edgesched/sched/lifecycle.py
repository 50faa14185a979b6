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
requests failed. All three return an `Update`: requests to stage, launches to start, answers to send (each saying
whether its buffers are to be fetched, released or left to a hung launch), buffers of ended
stuck launches to release, and notices to log.
"""
from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from edgesched.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    Overloaded,
    RequestError,
    ServerError,
)
from edgesched.sched.health import Health, signature
from edgesched.sched.state import Request, SchedState
from edgesched.types import Completion, Launch, ModelInfo, Plan, Priority, Timings


@dataclass(frozen=True)
class Submission:
    model: str                           # must be a loaded model (the caller checked)
    inputs: Mapping                      # name -> array, validated against the model's specs
    arrival_s: float                     # engine clock seconds
    deadline_s: float | None = None      # absolute, engine clock seconds
    priority: Priority | None = None     # None: the model's own class
    reply_to: object = None


class Outcome(str, enum.Enum):
    """How a request ended; the values are the statistics' counter names."""

    COMPLETED = "completed"
    FAILED = "failed"          # a backend fault, an unhealthy model, a hung launch
    EXPIRED = "expired"        # its deadline passed (or cannot be met)
    REJECTED = "rejected"      # refused at admission: its queue was full
    INVALID = "invalid"        # the backend refused its inputs: the client's mistake


class Buffers(enum.Enum):
    """What the engine does with the backend's copy of an answered request's tensors."""

    NONE = "none"              # never staged (refused at admission)
    FETCH = "fetch"            # completed: take the outputs
    RELEASE = "release"        # failed or expired: free them
    HELD = "held"              # a hung launch still uses them: freed when it ends


@dataclass(frozen=True)
class Answer:
    request: Request
    outcome: Outcome
    buffers: Buffers
    error: RequestError | None = None
    timings: Timings | None = None     # set for COMPLETED only


@dataclass
class Update:
    staged: list[tuple[Request, Mapping]] = field(default_factory=list)  # admitted: stage inputs
    launches: list[Launch] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)   # request ids: a stuck launch ended
    # (model, requests pending) after each admission and answer, in order: the statistics'
    # queue depth and peak follow them.
    depths: list[tuple[str, int]] = field(default_factory=list)
    notices: list[tuple[str, str]] = field(default_factory=list)   # (level, message) to log


class Lifecycle:
    def __init__(self, models: Mapping[str, ModelInfo], num_streams: int, *, queue_depth: int,
                 launch_timeout_s: float | None = None, health: Health | None = None):
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

    def set_models(self, models: Mapping[str, ModelInfo]) -> None:
        """A reload's model set; health entries follow (new ones healthy)."""
        self.models = dict(models)
        self.state.set_models(self.models)
        self.health.set_models(self.models)

    # --- queries --------------------------------------------------------------------------
    def wait_s(self, now: float, max_wait_s: float) -> float:
        """How long the engine may sleep: until the next deadline or launch timeout."""
        timeouts = self._timeouts
        while timeouts and self._ended(timeouts[0]):    # launches that ended in time
            heapq.heappop(timeouts)
        for heap in (self._deadlines, timeouts):
            if heap:
                max_wait_s = min(max_wait_s, max(heap[0][0] - now, 0.0))
        return max_wait_s

    # --- transitions ----------------------------------------------------------------------
    def intake(self, submissions: Iterable[Submission], now: float) -> Update:
        out = Update()
        for sub in submissions:
            self._admit(out, sub, now)
        self._expire(out, now)
        if self.state.stuck and len(self.state.stuck) == self.state.num_streams:
            self._fail_waiting(out, None, ServerError(
                "no stream can run the request: every stream is held by a slice that overran "
                "the launch timeout"))
        return out

    def launched(self, plan: Plan, now: float) -> Update:
        out = Update()
        for rid in plan.rejects:
            request = self.state.requests[rid]
            self._fail(out, request, DeadlineExceeded(
                f"model {request.model!r}: the deadline cannot be met (rejected early)"),
                Outcome.EXPIRED)
        for launch in plan.launches:
            self.state.start(launch, now)
            if self.launch_timeout_s is not None:
                heapq.heappush(self._timeouts, (now + self.launch_timeout_s,
                                                launch.request_id, launch.slice_index))
            out.launches.append(launch)
        return out

    def refused(self, request: Request, error: RequestError) -> Update:
        """The backend refused an admitted request's inputs when staging them (a shape outside
        the engine's profile): answered at once, and the model stays healthy for the others."""
        out = Update()
        self.state.retire(request)
        self._answer(out, Answer(request, Outcome.INVALID, Buffers.RELEASE, error))
        return out

    def update(self, completions: Iterable[Completion], now: float) -> Update:
        out = Update()
        for c in completions:
            self._complete(out, c, now)
        if self._timeouts:
            self._time_out(out, now)
        return out

    def abort_all(self, submissions: Iterable[Submission], error: RequestError,
                  now: float) -> Update:
        """Answer everything queued, running or still arriving with `error` (terminal)."""
        out = Update()
        for sub in submissions:
            self._admit(out, sub, now)
        for request in list(self.state.requests.values()):
            self.state.running.pop(request.id, None)
            self._fail(out, request, error, Outcome.FAILED)
        return out

    # --- admission ------------------------------------------------------------------------
    def _admit(self, out: Update, sub: Submission, now: float) -> None:
        info = self.models[sub.model]
        request = Request(next(self._ids), sub.model, sub.priority or info.priority,
                          sub.arrival_s, info.slo_ms / 1e3, info.num_slices, sub.deadline_s,
                          sub.reply_to)
        stuck = bool(self.state.stuck) and any(launch.model == sub.model
                                               for launch in self.state.stuck.values())
        if not self.health.admit(sub.model, now, stuck):
            refusal = ModelUnavailable(self.health.describe(sub.model)), Outcome.FAILED
        elif self.state.pending(sub.model) >= self.queue_depth:
            refusal = Overloaded(f"model {sub.model!r}: {self.queue_depth} requests already "
                                 "queued"), Outcome.REJECTED
        elif sub.deadline_s is not None and sub.deadline_s <= now:
            refusal = DeadlineExceeded(f"model {sub.model!r}: deadline passed before the "
                                       "request was queued"), Outcome.EXPIRED
        else:
            self.state.admit(request)
            self._shapes[request.id] = signature(sub.inputs)
            out.staged.append((request, sub.inputs))
            out.depths.append((request.model, self.state.pending(request.model)))
            if request.deadline_s is not None:
                heapq.heappush(self._deadlines, (request.deadline_s, request.id))
            return
        out.answers.append(Answer(request, refusal[1], Buffers.NONE, refusal[0]))

    def _expire(self, out: Update, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            request = self.state.requests.get(rid)
            if request is not None and rid not in self.state.running:
                self._fail(out, request, DeadlineExceeded(
                    f"model {request.model!r}: deadline passed after {request.next_slice} of "
                    f"{request.num_slices} slices"), Outcome.EXPIRED)

    # --- completions ----------------------------------------------------------------------
    def _complete(self, out: Update, c: Completion, now: float) -> None:
        state = self.state
        if state.running.get(c.launch.request_id) != c.launch:
            if state.unstick(c.launch):        # a launch that overran has ended
                out.notices.append(("warning", (
                    f"stream {c.launch.stream} is free again: model {c.launch.model!r} slice "
                    f"{c.launch.slice_index} ended {c.finished_s - c.started_s:.1f} s after "
                    "it started")))
                out.freed.append(c.launch.request_id)
            else:
                out.notices.append(("error", "ignoring a completion for a launch the engine "
                                             f"did not start: {c.launch}"))
            return
        request = state.finish(c.launch, c.finished_s - c.started_s)
        more = request.next_slice < request.num_slices
        # The last slice counts when it finished; a request with slices left cannot meet a
        # deadline that has passed by now (its heap entry may be gone: it was running).
        late = request.deadline_s is not None and (
            now >= request.deadline_s if more else c.finished_s > request.deadline_s)
        if c.error is not None and c.rejected and self.health.blames_inputs(
                request.model, self._shapes.get(request.id)):
            self.health.rejected(request.model, c.error)
            self._fail(out, request, InvalidInput(
                f"model {request.model!r} slice {c.launch.slice_index} refused input shapes it "
                f"has never run: {c.error}"), Outcome.INVALID)
        elif c.error is not None:
            self._fail(out, request, ServerError(
                f"model {request.model!r} slice {c.launch.slice_index} failed: {c.error}"),
                Outcome.FAILED)
            self._model_failed(out, request.model, f"slice {c.launch.slice_index}: {c.error}",
                               now)
        elif late:
            self._fail(out, request, DeadlineExceeded(
                f"model {request.model!r}: deadline passed while running (slice "
                f"{request.next_slice} of {request.num_slices} done)"), Outcome.EXPIRED)
        elif more:
            state.requeue(request)
        else:
            state.retire(request)
            timings = Timings((request.first_launch_s - request.arrival_s) * 1e3,
                              request.device_s * 1e3, (c.finished_s - request.arrival_s) * 1e3)
            self.health.worked(request.model, self._shapes.get(request.id))
            if self.health.succeeded(request.model):
                out.notices.append(("warning", f"model {request.model!r} is healthy again"))
            self._answer(out, Answer(request, Outcome.COMPLETED, Buffers.FETCH,
                                     timings=timings))

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
        waiting = state.waiting() if model is None else state.waiting_for(model)
        for request in list(waiting):
            self._fail(out, request, error, Outcome.FAILED)

    def _fail(self, out: Update, request: Request, error: RequestError,
              outcome: Outcome) -> None:
        self.state.retire(request)
        self._answer(out, Answer(request, outcome, Buffers.RELEASE, error))

    def _answer(self, out: Update, answer: Answer) -> None:
        out.answers.append(answer)
        self._shapes.pop(answer.request.id, None)
        model = answer.request.model
        out.depths.append((model, self.state.pending(model)))
