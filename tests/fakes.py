"""A tiny in-test Backend on a manual virtual clock (tests import it as `tests.fakes`).

Nothing runs: `launch` records the launch and decides its finish time from a per-slice
duration table (or leaves it open for the test to `finish` by hand); `poll` returns the
launches whose finish time is <= the fake clock, and when asked to wait it moves the clock to
the next finish (or by the whole timeout when nothing finishes sooner). Engine tests built on
it are deterministic and take no wall-clock time.

It also checks what a real device would not forgive: two launches on one stream, a launch of
a request that was never staged or of a slice out of order. Such a mistake raises
AssertionError inside the engine call that made it, so the test fails there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgesched.backends.base import LoadedModel
from edgesched.errors import InvalidInput
from edgesched.types import Completion, Launch, ModelInfo, Priority, TensorSpec

X = TensorSpec("x", "int64", (1,))
Y = TensorSpec("y", "int64", (None,))


def model_info(name: str, num_slices: int = 1, *, slo_ms: float = 100.0,
               priority: Priority = Priority.BEST_EFFORT, instances: int = 1) -> ModelInfo:
    """A model the fake can run: input x int64[1], output y int64[?]."""
    return ModelInfo(name, (X,), (Y,), num_slices, slo_ms, priority, instances, source="fake")


@dataclass
class Run:
    """One launch as the fake saw it. finish_s is None until the test decides it."""

    launch: Launch
    start_s: float
    finish_s: float | None
    error: str | None = None
    reported: bool = False


class FakeBackend:
    """Implements edgesched.backends.base.Backend on a manual clock.

    durations: seconds per (model, slice_index); a missing key uses default_duration_s; a
        value of None leaves the launch running until `finish(request_id, at_s)`.
    errors: error string per (request_id, slice_index): that launch completes with it.
    fail_if: called with each launch; a non-None string makes that launch fail.
    Outputs: `y` = [x[0], slice indices run in order...], so tests can check slice order.
    """

    name = "fake"

    def __init__(self, num_streams: int = 2, *, models: Mapping[str, ModelInfo] | None = None,
                 durations: Mapping[tuple[str, int], float | None] | None = None,
                 default_duration_s: float = 0.25,
                 errors: Mapping[tuple[int, int], str] | None = None,
                 fail_if: Callable[[Launch], str | None] | None = None, start_s: float = 0.0):
        self.num_streams = num_streams
        self.models: dict[str, ModelInfo] = dict(models or {})
        self.unloaded: list[str] = []        # models unloaded, in order
        self.durations = dict(durations or {})
        self.default_duration_s = default_duration_s
        self.errors = dict(errors or {})
        self.fail_if = fail_if
        self._now = start_s
        self._tensors: dict[int, dict] = {}        # request id -> {"model", "x", "trace"}
        self.runs: list[Run] = []                   # every launch, in launch order
        self.staged: list[int] = []                 # every request id ever staged
        self.fetched: list[int] = []
        self.released: list[int] = []
        self.max_concurrent = 0
        self.polls: list[float] = []                # the timeout of every poll
        self._wake_lock = threading.Lock()
        self.wakes = 0
        self.closed = False

    # --- the clock ----------------------------------------------------------------------------
    def clock(self) -> float:
        return self._now

    def advance(self, dt_s: float) -> None:
        self.set_time(self._now + dt_s)

    def set_time(self, t_s: float) -> None:
        assert t_s >= self._now, "the fake clock never goes back"
        self._now = t_s

    # --- test helpers -------------------------------------------------------------------------
    def live_requests(self) -> set[int]:
        """Request ids whose tensors the fake still holds."""
        return set(self._tensors)

    def running(self) -> list[Run]:
        return [r for r in self.runs if not r.reported]

    def launches_of(self, request_id: int) -> list[Launch]:
        return [r.launch for r in self.runs if r.launch.request_id == request_id]

    def finish(self, request_id: int, at_s: float, error: str | None = None) -> None:
        """Decide when an open launch (duration None) of this request ends."""
        (run,) = [r for r in self.running() if r.launch.request_id == request_id]
        assert run.finish_s is None, "this launch already has a finish time"
        assert at_s >= run.start_s
        run.finish_s, run.error = at_s, error

    # --- the Backend protocol ---------------------------------------------------------------
    def load(self, model: str, path: Path, instances: int) -> LoadedModel:
        info = self.models[model]
        return LoadedModel(info.inputs, info.outputs, info.num_slices)

    def unload(self, model: str) -> None:
        assert model in self.models, f"unload of {model!r}, which is not loaded"
        held = [rid for rid, t in self._tensors.items() if t["model"] == model]
        assert not held, f"unload of {model!r} while requests {held} are staged"
        self.unloaded.append(model)

    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        assert request_id not in self._tensors, f"request {request_id} staged twice"
        x = inputs.get("x")
        if x is not None and int(x[0]) < 0:      # as a TensorRT profile refuses a shape
            raise InvalidInput(f"x = {int(x[0])}: the fake engine takes x >= 0")
        self.staged.append(request_id)
        self._tensors[request_id] = {"model": model, "x": None if x is None else int(x[0]),
                                     "trace": []}

    def launch(self, launch: Launch) -> None:
        held = self._tensors.get(launch.request_id)
        assert held is not None, f"launch of request {launch.request_id}, which is not staged"
        assert held["model"] == launch.model
        assert launch.slice_index == len(held["trace"]), (
            f"request {launch.request_id}: slice {launch.slice_index} launched after "
            f"{held['trace']}")
        assert 0 <= launch.stream < self.num_streams, f"no stream {launch.stream}"
        busy = {r.launch.stream for r in self.running()}
        assert launch.stream not in busy, f"stream {launch.stream} is busy"
        assert launch.request_id not in {r.launch.request_id for r in self.running()}, (
            f"request {launch.request_id} runs twice at once")
        duration = self.durations.get((launch.model, launch.slice_index),
                                      self.default_duration_s)
        error = self.errors.get((launch.request_id, launch.slice_index))
        if error is None and self.fail_if is not None:
            error = self.fail_if(launch)
        finish = None if duration is None else self._now + duration
        self.runs.append(Run(launch, self._now, finish, error))
        self.max_concurrent = max(self.max_concurrent, len(self.running()))

    def poll(self, timeout_s: float) -> list[Completion]:
        self.polls.append(timeout_s)
        done = self._due()
        if not done and timeout_s > 0:
            ends = [r.finish_s for r in self.running() if r.finish_s is not None]
            nearest = min(ends, default=None)
            limit = self._now + timeout_s
            self._now = nearest if nearest is not None and nearest <= limit else limit
            done = self._due()
        completions = []
        for run in done:
            run.reported = True
            if run.error is None:
                held = self._tensors.get(run.launch.request_id)
                if held is not None:
                    held["trace"].append(run.launch.slice_index)
            completions.append(Completion(run.launch, run.start_s, run.finish_s, run.error))
        return completions

    def _due(self) -> list[Run]:
        due = [r for r in self.running() if r.finish_s is not None and r.finish_s <= self._now]
        return sorted(due, key=lambda r: r.finish_s)

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        held = self._tensors.pop(request_id)
        self.fetched.append(request_id)
        info = self.models.get(held["model"])
        assert info is None or len(held["trace"]) == info.num_slices, (
            f"request {request_id} fetched after slices {held['trace']}")
        return {"y": np.array([held["x"], *held["trace"]], dtype=np.int64)}

    def release(self, request_id: int) -> None:
        self._tensors.pop(request_id, None)
        self.released.append(request_id)

    def bind(self, doorbell) -> None:
        """Count the rings of the engine's doorbell (its poll never sleeps on it: the fake's
        clock jumps)."""
        ring = doorbell.ring

        def counting_ring() -> None:
            with self._wake_lock:
                self.wakes += 1
            ring()
        doorbell.ring = counting_ring

    def close(self) -> None:
        self.closed = True
