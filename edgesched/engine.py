"""The engine loop: state -> policy.plan -> backend.launch -> backend.poll -> state.

One thread runs `step` (it owns the state and the backend); any thread may `submit`.
Every submission ends in exactly one `on_result` call: outputs, or a typed error. Whether to
take new work at all (e.g. while shutting down) is the submitter's decision, not the engine's.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from edgesched.backends.base import Backend
from edgesched.errors import DeadlineExceeded, Overloaded, RequestError, ServerError
from edgesched.sched import Policy, Request, SchedState
from edgesched.stats import Stats
from edgesched.types import Completion, Launch, ModelInfo, Priority, Timings


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
                 clock: Callable[[], float] = time.monotonic, stats: Stats | None = None):
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

    # --- any thread -------------------------------------------------------------------------
    def submit(self, submission: Submission) -> None:
        self._inbox.append(submission)
        self.backend.wake()

    @property
    def idle(self) -> bool:
        return not self._inbox and not self.state.requests

    # --- the engine thread ------------------------------------------------------------------
    def step(self, max_wait_s: float = 0.1) -> None:
        now = self._clock()
        self._admit(now)
        self._expire(now)
        plan = self.policy.plan(self.state, now)
        for rid in plan.rejects:
            request = self.state.requests[rid]
            self._fail(request, DeadlineExceeded(
                f"model {request.model!r}: the deadline cannot be met (rejected early)"),
                "expired")
        for launch in plan.launches:
            self._start(launch, now)
        self._complete(self.backend.poll(self._wait_s(now, max_wait_s)))

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
        if self._deadlines:
            return min(max_wait_s, max(self._deadlines[0][0] - now, 0.0))
        return max_wait_s

    def _admit(self, now: float) -> None:
        while self._inbox:
            sub = self._inbox.popleft()
            info = self.models[sub.model]
            request = Request(next(self._ids), sub.model, sub.priority or info.priority,
                              sub.arrival_s, info.slo_ms / 1e3, info.num_slices, sub.deadline_s,
                              sub.reply_to)
            if self.state.pending(sub.model) >= self._queue_depth:
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
                self.stats.queue_depth[request.model] = self.state.pending(request.model)

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
        self.backend.launch(launch)

    def _complete(self, completions: list[Completion]) -> None:
        now = self._clock() if completions else 0.0
        for c in completions:
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
        self.stats.queue_depth[request.model] = self.state.pending(request.model)
        self._on_result(result)
