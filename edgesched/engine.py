"""The engine loop: state -> policy.plan -> backend.launch -> backend.poll -> state.

One thread runs `step` (it owns the state and the backend); any thread may `submit`.
Every submission ends in exactly one `on_result` call: outputs, or a typed error. Whether to
take new work at all (e.g. while shutting down) is the submitter's decision, not the engine's.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from edgesched.backends.base import Backend
from edgesched.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    RequestError,
    ServerError,
)
from edgesched.health import Health
from edgesched.sched import Policy, Request, SchedState
from edgesched.stats import Stats
from edgesched.types import Completion, Launch, ModelInfo, Priority, Timings

log = logging.getLogger("edgesched.engine")


@dataclass(frozen=True)
class Submission:
    model: str                           # must be a loaded model (the caller checked)
    inputs: Mapping[str, np.ndarray]     # already validated against the model's specs
    arrival_s: float                     # engine clock seconds
    deadline_s: float | None = None      # absolute, engine clock seconds
    priority: Priority | None = None     # None: the model's own class
    reply_to: object = None


@dataclass(frozen=True)
class Result:
    model: str
    reply_to: object
    outputs: dict[str, np.ndarray] | None
    error: RequestError | None
    timings: Timings | None


class Engine:
    def __init__(self, backend: Backend, models: Mapping[str, ModelInfo], policy: Policy, *,
                 queue_depth: int, on_result: Callable[[Result], None],
                 clock: Callable[[], float] = time.monotonic, stats: Stats | None = None,
                 launch_timeout_s: float | None = None, health: Health | None = None):
        self.backend = backend
        self.policy = policy
        self.models = dict(models)
        self.state = SchedState(self.models, backend.num_streams)
        self.stats = stats or Stats({m.name: m.slo_ms for m in models.values()})
        self._queue_depth = queue_depth
        self._on_result = on_result
        self._clock = clock
        self._inbox: collections.deque[Submission] = collections.deque()  # thread-safe appends
        self._ids = itertools.count(1)
        self._deadlines: list[tuple[float, int]] = []                    # heap of (deadline, id)
        # A launch running longer than this fails its request; None: launches never time out.
        self.launch_timeout_s = launch_timeout_s
        self._timeouts: list[tuple[float, int, int]] = []      # heap of (give up s, id, slice)
        self.health = health or Health(self.models, unhealthy_after=3, retry_s=5.0)

    # --- any thread -------------------------------------------------------------------------
    def submit(self, submission: Submission) -> None:
        self._inbox.append(submission)
        self.backend.wake()

    @property
    def idle(self) -> bool:
        """Nothing queued or running that awaits an answer (stuck launches were answered)."""
        return not self._inbox and not self.state.requests

    @property
    def stuck_streams(self) -> int:
        """Streams held by a launch that overran the launch timeout and has not ended."""
        return len(self.state.stuck)

    # --- the engine thread ------------------------------------------------------------------
    def step(self, max_wait_s: float = 0.1) -> None:
        now = self._clock()
        self._admit(now)
        self._expire(now)
        if self.state.stuck and len(self.state.stuck) == self.state.num_streams:
            self._fail_waiting(None, ServerError(
                "no stream can run the request: every stream is held by a slice that overran "
                "the launch timeout"))
        plan = self.policy.plan(self.state, now)
        for rid in plan.rejects:
            request = self.state.requests[rid]
            self._fail(request, DeadlineExceeded(
                f"model {request.model!r}: the deadline cannot be met (rejected early)"),
                "expired")
        for launch in plan.launches:
            self._start(launch, now)
        self._complete(self.backend.poll(self._wait_s(now, max_wait_s)))
        if self._timeouts:
            self._time_out(self._clock())

    def abort_all(self, error: RequestError) -> None:
        """Answer every queued and running request with `error`. Terminal: call it only once the
        engine thread has stopped (after a drain timeout); the engine must not step again."""
        self._admit(self._clock())
        for request in list(self.state.requests.values()):
            self.state.running.pop(request.id, None)
            self._fail(request, error, "failed")

    def _wait_s(self, now: float, max_wait_s: float) -> float:
        if self._inbox:
            return 0.0
        timeouts = self._timeouts
        while timeouts and self._ended(timeouts[0]):    # launches that ended in time
            heapq.heappop(timeouts)
        for heap in (self._deadlines, timeouts):
            if heap:
                max_wait_s = min(max_wait_s, max(heap[0][0] - now, 0.0))
        return max_wait_s

    def _admit(self, now: float) -> None:
        while self._inbox:
            sub = self._inbox.popleft()
            info = self.models[sub.model]
            request = Request(next(self._ids), sub.model, sub.priority or info.priority,
                              sub.arrival_s, info.slo_ms / 1e3, info.num_slices, sub.deadline_s,
                              sub.reply_to)
            stuck = any(launch.model == sub.model for launch in self.state.stuck.values())
            if not self.health.admit(sub.model, now, stuck):
                self._reject(request, ModelUnavailable(self.health.describe(sub.model)), "failed")
            elif self.state.pending(sub.model) >= self._queue_depth:
                self._reject(request, Overloaded(
                    f"model {sub.model!r}: {self._queue_depth} requests already queued"), "rejected")
            elif sub.deadline_s is not None and sub.deadline_s <= now:
                self._reject(request, DeadlineExceeded(
                    f"model {sub.model!r}: deadline passed before the request was queued"), "expired")
            else:
                self.state.admit(request)
                self.backend.stage(request.id, request.model, sub.inputs)
                if request.deadline_s is not None:
                    heapq.heappush(self._deadlines, (request.deadline_s, request.id))
                self.stats.set_queue_depth(request.model, self.state.pending(request.model))

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            request = self.state.requests.get(rid)
            if request is not None and rid not in self.state.running:
                self._fail(request, DeadlineExceeded(
                    f"model {request.model!r}: deadline passed after {request.next_slice} of "
                    f"{request.num_slices} slices"), "expired")

    def _start(self, launch: Launch, now: float) -> None:
        self.state.start(launch, now)
        if self.launch_timeout_s is not None:
            heapq.heappush(self._timeouts, (now + self.launch_timeout_s, launch.request_id,
                                            launch.slice_index))
        self.backend.launch(launch)

    def _time_out(self, now: float) -> None:
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
            log.error("model %r: %s; stream %d is held until it ends", request.model, what,
                      launch.stream)
            self.stats.count(request.model, "failed")
            self._answer(request, Result(request.model, request.reply_to, None, ServerError(
                f"model {request.model!r} {what}"), None))
            self._model_failed(request.model, what, now, timed_out=True)

    def _ended(self, timeout: tuple[float, int, int]) -> bool:
        launch = self.state.running.get(timeout[1])
        return launch is None or launch.slice_index != timeout[2]

    def _model_failed(self, model: str, error: str, now: float, timed_out: bool = False) -> None:
        if self.health.failed(model, error, now, timed_out):
            log.error("%s", self.health.describe(model))
            self._fail_waiting(model, ModelUnavailable(self.health.describe(model)))

    def _fail_waiting(self, model: str | None, error: RequestError) -> None:
        """Fail the waiting (not running) requests of `model`, or of every model if None."""
        waiting = self.state.waiting() if model is None else self.state.waiting_for(model)
        for request in list(waiting):
            self._fail(request, error, "failed")

    def _complete(self, completions: list[Completion]) -> None:
        now = self._clock() if completions else 0.0
        for c in completions:
            if self.state.running.get(c.launch.request_id) != c.launch:
                if self.state.unstick(c.launch):        # a launch that overran has ended
                    log.warning("stream %d is free again: model %r slice %d ended %.1f s after "
                                "it started", c.launch.stream, c.launch.model,
                                c.launch.slice_index, c.finished_s - c.started_s)
                    self.backend.release(c.launch.request_id)
                else:
                    log.error("ignoring a completion for a launch the engine did not start: %s",
                              c.launch)
                continue
            request = self.state.finish(c.launch, c.finished_s - c.started_s)
            more = request.next_slice < request.num_slices
            # The last slice counts when it finished; a request with slices left cannot meet a
            # deadline that has passed by now (its heap entry may be gone: it was running).
            late = request.deadline_s is not None and (
                now >= request.deadline_s if more else c.finished_s > request.deadline_s)
            if c.error is not None:
                self._fail(request, ServerError(
                    f"model {request.model!r} slice {c.launch.slice_index} failed: {c.error}"),
                    "failed")
                self._model_failed(request.model, f"slice {c.launch.slice_index}: {c.error}",
                                   now)
            elif late:
                self._fail(request, DeadlineExceeded(
                    f"model {request.model!r}: deadline passed while running (slice "
                    f"{request.next_slice} of {request.num_slices} done)"), "expired")
            elif more:
                self.state.requeue(request)
            else:
                outputs = self.backend.fetch(request.id)
                self.state.retire(request)
                total_ms = (c.finished_s - request.arrival_s) * 1e3
                timings = Timings((request.first_launch_s - request.arrival_s) * 1e3,
                                  request.device_s * 1e3, total_ms)
                self.stats.completed(request.model, total_ms)
                if self.health.succeeded(request.model):
                    log.warning("model %r is healthy again", request.model)
                self._answer(request, Result(request.model, request.reply_to, outputs, None,
                                             timings))

    def _reject(self, request: Request, error: RequestError, outcome: str) -> None:
        self.stats.count(request.model, outcome)
        self._on_result(Result(request.model, request.reply_to, None, error, None))

    def _fail(self, request: Request, error: RequestError, outcome: str) -> None:
        self.backend.release(request.id)
        self.state.retire(request)
        self.stats.count(request.model, outcome)
        self._answer(request, Result(request.model, request.reply_to, None, error, None))

    def _answer(self, request: Request, result: Result) -> None:
        self.stats.set_queue_depth(request.model, self.state.pending(request.model))
        self._on_result(result)
