"""The engine loop: intake, then three calls: plan -> launch -> update from completions.

`Lifecycle.intake` (sched/) admits new submissions and enforces deadlines; `policy.plan`
decides what runs; the backend carries the launches out; `Lifecycle.update` says what the
completions and launch timeouts mean. The engine only executes those decisions: stage,
launch, fetch or release buffers, count, reply.

One thread runs `step` (it owns the state and the backend); any thread may `submit`, which
rings the engine's doorbell, the one wake-up that also ends a backend's wait for completions.
Every submission ends in exactly one `on_result` call: outputs, or a typed error. Whether to
take new work at all (e.g. while shutting down) is the submitter's decision, not the engine's.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from edgesched.backends.base import Backend, Doorbell
from edgesched.errors import InvalidInput, RequestError
from edgesched.sched import Policy
from edgesched.sched.health import Health
from edgesched.sched.lifecycle import Answer, Buffers, Lifecycle, Outcome, Submission, Update
from edgesched.stats import Stats
from edgesched.types import ModelInfo, Timings

log = logging.getLogger("edgesched.engine")


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
        self.life = Lifecycle(self.models, backend.num_streams, queue_depth=queue_depth,
                              launch_timeout_s=launch_timeout_s, health=health)
        self.state, self.health = self.life.state, self.life.health
        self.stats = stats or Stats({m.name: m.slo_ms for m in models.values()})
        self.doorbell = Doorbell()
        backend.bind(self.doorbell)
        self._on_result = on_result
        self._clock = clock
        self._inbox: collections.deque[Submission] = collections.deque()  # thread-safe appends

    # --- any thread -------------------------------------------------------------------------
    def submit(self, submission: Submission) -> None:
        self._inbox.append(submission)
        self.doorbell.ring()

    def wake(self) -> None:
        """End the engine thread's current wait early (e.g. to stop it)."""
        self.doorbell.ring()

    @property
    def idle(self) -> bool:
        """Nothing queued or running that awaits an answer (stuck launches were answered)."""
        return not self._inbox and not self.state.requests

    @property
    def stuck_streams(self) -> int:
        """Streams held by a launch that overran the launch timeout and has not ended."""
        return len(self.state.stuck)

    @property
    def launch_timeout_s(self) -> float | None:
        return self.life.launch_timeout_s

    # --- the engine thread ------------------------------------------------------------------
    def step(self, max_wait_s: float = 0.1) -> None:
        now = self._clock()
        self._carry_out(self.life.intake(self._take_inbox(), now))
        plan = self.policy.plan(self.state, now)
        self._carry_out(self.life.launched(plan, now))
        completions = self.backend.poll(self._wait_s(now, max_wait_s))
        self._carry_out(self.life.update(completions, self._clock()))

    def abort_all(self, error: RequestError) -> None:
        """Answer every queued and running request with `error`. Terminal: call it only once the
        engine thread has stopped (after a drain timeout); the engine must not step again."""
        self._carry_out(self.life.abort_all(self._take_inbox(), error, self._clock()))

    def _wait_s(self, now: float, max_wait_s: float) -> float:
        return 0.0 if self._inbox else self.life.wait_s(now, max_wait_s)

    def _take_inbox(self) -> list[Submission]:
        inbox, taken = self._inbox, []
        while inbox:
            taken.append(inbox.popleft())
        return taken

    def _carry_out(self, update: Update) -> None:
        backend = self.backend
        for level, message in update.notices:
            getattr(log, level)("%s", message)
        refused = []
        for request, inputs in update.staged:
            try:
                backend.stage(request.id, request.model, inputs)
            except InvalidInput as e:            # fits the model's specs, not the engine's
                refused.append((request, e))
        for launch in update.launches:
            backend.launch(launch)
        for request_id in update.freed:
            backend.release(request_id)
        for model, depth in update.depths:
            self.stats.set_queue_depth(model, depth)
        for answer in update.answers:
            self._answer(answer)
        for request, error in refused:        # after this update's queue depths, not before
            self._carry_out(self.life.refused(request, error))

    def _answer(self, answer: Answer) -> None:
        request, outputs = answer.request, None
        if answer.buffers is Buffers.FETCH:
            outputs = self.backend.fetch(request.id)
        elif answer.buffers is Buffers.RELEASE:
            self.backend.release(request.id)
        if answer.outcome is Outcome.COMPLETED:
            self.stats.completed(request.model, answer.timings.total_ms)
        else:
            self.stats.count(request.model, answer.outcome.value)
        self._on_result(Result(request.model, request.reply_to, outputs, answer.error,
                               answer.timings))


__all__ = ["Engine", "Result", "Submission"]
