"""The engine loop: intake, then three calls: plan -> launch -> update from completions.

`Lifecycle.intake` (sched/) admits new submissions and enforces deadlines; `policy.plan`
decides what runs; the backend carries the launches out; `Lifecycle.update` says what the
completions and launch timeouts mean. The engine only executes those decisions: stage,
launch, fetch or release buffers, count, reply.

One thread runs `step` (it owns the state and the backend); any thread may `submit`, which
rings the engine's doorbell, the one wake-up that also ends a backend's wait for completions.
Every submission ends in exactly one `on_result` call: outputs, or a typed error. Whether to
take new work at all (e.g. while shutting down) is the submitter's decision, not the engine's.
Completions are also measured (`_measure`): each stream's busy time, and, for slices that ran
alone, measured over the profile's time (sched/drift.py), whose sustained changes are logged.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from edgesched.backends.base import Backend, Doorbell
from edgesched.errors import InvalidInput, RequestError, ServerError
from edgesched.sched import Policy
from edgesched.sched.batching import BatchLatency
from edgesched.sched.drift import Drift, describe
from edgesched.sched.health import Health
from edgesched.sched.lifecycle import Lifecycle, Submission
from edgesched.sched.profile import Profile
from edgesched.sched.updates import NOTHING, Answer, Buffers, Outcome, Update
from edgesched.stats import Stats
from edgesched.types import Completion, Launch, ModelInfo, Timings

log = logging.getLogger("edgesched.engine")
# Read once per answer: an Enum member read through its class costs ~0.1 us (CPython 3.11).
_COMPLETED, _FETCH, _RELEASE, _HELD = (Outcome.COMPLETED, Buffers.FETCH, Buffers.RELEASE,
                                       Buffers.HELD)


# Result(...) without the NamedTuple's Python-level __new__ (once per request): the same value.
_tuple_new = tuple.__new__


class Result(NamedTuple):
    """What `on_result` gets, once per request: a NamedTuple (immutable, like a frozen
    dataclass, but made without a per-field object.__setattr__, ~1 us saved per request)."""

    model: str
    reply_to: object
    outputs: dict[str, np.ndarray] | None
    error: RequestError | None
    timings: Timings | None


class Engine:
    def __init__(self, backend: Backend, models: Mapping[str, ModelInfo], policy: Policy, *,
                 queue_depth: int, on_result: Callable[[Result], None],
                 clock: Callable[[], float] = time.monotonic, stats: Stats | None = None,
                 launch_timeout_s: float | None = None, health: Health | None = None,
                 drift: Drift | None = None,
                 drift_cause: Callable[[str], str | None] | None = None,
                 profile: Profile | None = None):
        """drift: measured/expected per model and slice (None: no usable profile);
        drift_cause(model): what telemetry shows changed, asked only when drift begins;
        profile: its latency per batch size sizes batches (None: the policy's profile, if
        it has one; else batches are sized by what this engine has seen of them)."""
        self.backend = backend
        self.policy = policy
        self.models = dict(models)
        profile = profile if profile is not None else getattr(policy, "profile", None)
        self.life = Lifecycle(self.models, backend.num_streams, queue_depth=queue_depth,
                              launch_timeout_s=launch_timeout_s, health=health,
                              batch_latency=BatchLatency(profile.batch_seconds())
                              if profile is not None else None)
        self._unit_outputs: dict[int, dict[str, np.ndarray]] = {}  # a batch's, until split
        self.state, self.health = self.life.state, self.life.health
        self.stats = stats or Stats({m.name: m.slo_ms for m in models.values()})
        self.stats.set_streams(backend.num_streams)
        self.drift = drift
        self._drift_cause = drift_cause
        # stream -> [its launch, alone so far]: a slice is measured for drift only if no other
        # launch was running at any time beside it (co-running is interference, not drift).
        self._on_stream: dict[int, list] = {}
        self.doorbell = Doorbell()
        backend.bind(self.doorbell)
        self._on_result = on_result
        self._clock = clock
        self._inbox: collections.deque[Submission] = collections.deque()  # thread-safe appends
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self.retiring: set[str] = set()     # models removed by a reload, unloaded once drained
        # A reload loads a changed model's new version under another backend key (name@N)
        # beside the old one: model name -> its current key where not the name itself. Each
        # staged request keeps the key it was staged on until its buffers are freed, and a key
        # replaced or retired is unloaded once no request holds it.
        self._current: dict[str, str] = {}
        self._keys: dict[int, str] = {}                   # request id -> backend key
        self._renamed: dict[tuple[int, int], Launch] = {}  # (request, slice) -> engine's launch
        self._retiring_keys: set[str] = set()

    # --- any thread -------------------------------------------------------------------------
    def submit(self, submission: Submission, ring: bool = True) -> None:
        """ring=False: only from the engine's own thread between steps (the server's loop),
        where the next step takes the inbox anyway."""
        self._inbox.append(submission)
        if ring:
            self.doorbell.ring()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run fn on the engine thread before the next step's intake (a reload's changes)."""
        self._calls.append(fn)
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
        while self._calls:
            self._calls.popleft()()
        if self.retiring or self._retiring_keys:
            self._unload_drained()
        life, now = self.life, self._clock()
        inbox = self._inbox
        if inbox:
            taken = [inbox.popleft()]           # _take_inbox, inline (most steps take one)
            while inbox:
                taken.append(inbox.popleft())
            self._carry_out(life.intake(taken, now))
        else:
            self._carry_out(life.intake((), now))
        plan = self.policy.plan(self.state, now)
        if plan.launches or plan.rejects:      # most waits' plans are empty: nothing to do
            if life.start_alone(plan, now):    # the common plan: launches only (no Update)
                self._launch(plan.launches)
            else:
                self._carry_out(life.launched(plan, now))
        completions = self.backend.poll(self._wait_s(now, max_wait_s))
        now = self._clock()
        if completions:
            if self._renamed:
                completions = [self._restore(c) for c in completions]
            self._measure(completions, now)
        self._carry_out(life.update(completions, now))

    def abort_all(self, error: RequestError) -> None:
        """Answer every queued and running request with `error`. Terminal: call it only once the
        engine thread has stopped (after a drain timeout); the engine must not step again."""
        self._carry_out(self.life.abort_all(self._take_inbox(), error, self._clock()))

    def _wait_s(self, now: float, max_wait_s: float) -> float:
        if self._inbox or self._calls:
            return 0.0
        wait = self.life.wait_s(now, max_wait_s)
        # A policy that held work back until a time (interference: a frame expected by then)
        # plans again at that time even if nothing else happens; > 1 us ahead, so a hint at
        # `now` (rounding) never makes a zero wait that repeats forever on a virtual clock.
        wake = getattr(self.policy, "wake_at_s", None)
        if wake is not None and now + 1e-6 < wake < now + wait:
            wait = wake - now
        return wait

    # --- model set changes (engine thread; serve/reload.py queues them with call_soon) -----
    def set_models(self, models: Mapping[str, ModelInfo], fresh: tuple[str, ...] = ()) -> None:
        """Serve `models` from now on (statistics of `fresh` ones start at zero). A model
        left out must be drained: see `retire`."""
        self.models = dict(models)
        self.stats.set_models({m.name: m.slo_ms for m in self.models.values()}, fresh)
        self.life.set_models(self.models)

    def switch(self, versions: Mapping[str, tuple[ModelInfo, str]],
               publish: Callable[[], None]) -> None:
        """name -> (its new ModelInfo, the backend key it is loaded under): from now on new
        requests run there; a replaced key is unloaded once its requests are answered. The
        submitter holds its intake closed around this call: what it checked against the old
        models (queued now) is admitted first, on the old versions; then `publish` shows the
        new ones to the submitter."""
        self._carry_out(self.life.intake(self._take_inbox(), self._clock()))
        models = dict(self.models)
        for name, (info, key) in versions.items():
            old = self._current.get(name, name)
            if old != key:
                self._retiring_keys.add(old)
                models.pop(key, None)        # the new version's warm-up entry (serve/reload.py)
            models[name] = info
            if key == name:
                self._current.pop(name, None)
            else:
                self._current[name] = key
        self.set_models(models)
        publish()

    def retire(self, model: str) -> None:
        """Unload `model` once nothing of it is queued, running or stuck on a stream (the
        submitter has stopped sending it new requests)."""
        self.retiring.add(model)

    def _unload_drained(self) -> None:
        queued = {s.model for s in list(self._inbox)}      # a C-level copy under the GIL
        stuck = {launch.model for launch in self.state.stuck.values()}
        for model in [m for m in self.retiring if m not in queued and m not in stuck
                      and self.state.pending(m) == 0]:
            self.retiring.discard(model)
            self.set_models({n: i for n, i in self.models.items() if n != model})
            self._retiring_keys.add(self._current.pop(model, model))
            log.info("model %r drained", model)
        if self._retiring_keys:
            held = set(self._keys.values()) | {self._current.get(m, m) for m in self.models}
            for key in [k for k in self._retiring_keys if k not in held]:
                self._retiring_keys.discard(key)
                self.backend.unload(key)
                log.info("unloaded %r", key)

    def _restore(self, c: Completion) -> Completion:
        launch = self._renamed.pop((c.launch.request_id, c.launch.slice_index), None)
        return c if launch is None else dataclasses.replace(c, launch=launch)

    def _started(self, launch: Launch) -> None:
        on_stream = self._on_stream
        for entry in on_stream.values():
            entry[1] = False
        on_stream[launch.stream] = [launch, not on_stream]

    def _measure(self, completions: Sequence[Completion], now: float) -> None:
        busy, drift = self.stats.stream_busy_s, self.drift    # Stats.stream_busy, inline
        for c in completions:
            seconds = c.finished_s - c.started_s
            stream = c.launch.stream
            if stream < len(busy):
                busy[stream] += seconds
            if drift is None:
                continue
            entry = self._on_stream.get(c.launch.stream)
            if entry is None or (entry[0] is not c.launch and entry[0] != c.launch):
                continue
            del self._on_stream[c.launch.stream]
            if self.drift is None or not entry[1] or c.error is not None or \
                    self.life.batched(c.launch.request_id):
                continue      # (a batch's slice takes longer than the profile's lone one)
            event = self.drift.observe(c.launch.model, c.launch.slice_index, seconds, now)
            if event is not None:
                cause = None
                if event.drifting and self._drift_cause is not None:
                    try:
                        cause = self._drift_cause(event.model)
                    except Exception:    # telemetry must never stop the engine
                        log.exception("reading telemetry for the drift's cause failed")
                self.drift.set_cause(event.model, cause)
                (log.warning if event.drifting else log.info)(
                    "%s", describe(event, cause, self.drift.threshold, self.drift.sustain_s))

    def _take_inbox(self) -> list[Submission]:
        inbox, taken = self._inbox, []
        while inbox:
            taken.append(inbox.popleft())
        return taken

    def _carry_out(self, update: Update) -> None:
        if update is NOTHING:
            return      # most steps' intake or update (and this runs up to 3x a step)
        if not (update.staged or update.launches or update.answers or update.freed
                or update.depths or update.notices or update.batches):
            return      # e.g. a plan whose launches all wait for company (batching)
        backend, keys = self.backend, self._keys
        for level, message in update.notices:
            getattr(log, level)("%s", message)
        refused = []
        if update.staged:
            current = self._current
            for request, inputs in update.staged:
                key = keys[request.id] = current.get(request.model, request.model)
                try:
                    backend.stage(request.id, key, inputs)
                except InvalidInput as e:            # fits the model's specs, not the engine's
                    refused.append((request, e))
        for head, inputs, others in update.batches:
            self._stage_batch(head, inputs, others)
        if update.launches:
            self._launch(update.launches)
        for request_id in update.freed:
            backend.release(request_id)
            self._keys.pop(request_id, None)
        if update.depths:
            self.stats.set_queue_depths(update.depths)
        for answer in update.answers:
            self._answer(answer)
        for request, error in refused:        # after this update's queue depths, not before
            self._carry_out(self.life.refused(request, error))

    def _launch(self, launches: Sequence[Launch]) -> None:
        """Start the launches on the backend, each under its request's backend key."""
        backend, keys, drift = self.backend, self._keys, self.drift
        for launch in launches:
            model = launch.model
            key = keys.get(launch.request_id, model)
            if key != model:
                self._renamed[(launch.request_id, launch.slice_index)] = launch
                backend.launch(dataclasses.replace(launch, model=key))
            else:
                backend.launch(launch)
            if drift is not None:      # who ran alone matters to drift only
                self._started(launch)

    def _stage_batch(self, head, inputs, others: tuple[int, ...]) -> None:
        """A batch's head now carries the members' inputs; their own copies are freed once
        the backend took the batch's (if it refuses them, the batch is undone)."""
        backend, key = self.backend, self._keys.get(head.id, head.model)
        backend.release(head.id)
        try:
            backend.stage(head.id, key, inputs)
        except InvalidInput as e:      # a batch shape outside the engine's range
            alone, warning = self.life.unbatch(head, e)
            log.warning("%s", warning)
            backend.stage(head.id, key, alone)      # as it was staged at admission
            return
        for rid in others:
            backend.release(rid)
            self._keys.pop(rid, None)

    def _rows(self, answer: Answer) -> dict[str, np.ndarray] | None:
        """A batch member's rows of its batch's outputs (fetched once, with the first member's
        answer); None when an output's first dimension is not the batch's rows."""
        unit, first, end, rows = answer.part
        outputs = self._unit_outputs.get(unit)
        if outputs is None:
            outputs = self._unit_outputs[unit] = self.backend.fetch(unit)
        if end == rows:
            del self._unit_outputs[unit]
        if any(a.shape[:1] != (rows,) for a in outputs.values()):
            return None
        return {name: a[first:end] for name, a in outputs.items()}

    def _answer(self, answer: Answer) -> None:
        # Once per request: the NamedTuple unpacked once, not read field by field.
        request, outcome, buffers, error, timings, part = answer
        outputs = None
        if part is not None:
            outputs = self._rows(answer)
            if outputs is None:
                self.life.batches.turn_off(request.model)
                outcome, timings, error = Outcome.FAILED, None, ServerError(
                    f"model {request.model!r}: a batch's outputs do not have the batch's "
                    "rows as their first dimension, so they cannot be split")
        elif buffers is _FETCH:
            outputs = self.backend.fetch(request.id)
        elif buffers is _RELEASE:
            self.backend.release(request.id)
        if buffers is not _HELD:     # a hung launch holds its key until it ends
            self._keys.pop(request.id, None)
        model = request.model
        if outcome is _COMPLETED:
            self.stats.completed(model, timings.total_ms, timings.queue_ms, timings.device_ms)
        else:
            self.stats.count(model, outcome.value)
        self._on_result(_tuple_new(Result, (model, request.reply_to, outputs, error, timings)))


__all__ = ["Engine", "Result", "Submission"]
