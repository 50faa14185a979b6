"""A Residency driven through a real Engine on this thread (no sockets): what the server does
with them, minus the wire. Used by the memory-budget suites."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgesched.config import ModelConfig
from edgesched.engine import Engine, Submission
from edgesched.sched import make_policy
from edgesched.serve.residency import Residency
from edgesched.types import Priority

HANG_S = 20.0          # hang protection only: every wait below ends in milliseconds


def entry(name: str, path: Path, priority: Priority = Priority.BEST_EFFORT) -> ModelConfig:
    return ModelConfig(name, Path(path), 1000.0, priority)


class Rig:
    """Residency + Engine on `backend`; results by tag."""

    def __init__(self, backend, entries: list[ModelConfig], budget_mb: float | None):
        self.backend = backend
        self.residency = Residency(backend, budget_mb, "test.yaml")
        self.models = self.residency.load(entries)
        self.results: dict = {}

        def answered(result) -> None:
            self.results[result.reply_to] = result
        self.engine = Engine(backend, self.models, make_policy("greedy"), queue_depth=64,
                             on_result=answered)
        self.intake = threading.Lock()
        self.residency.start(self.engine, answered, self.intake)
        self.after_step = lambda: None        # a check after every engine step

    def submit(self, model: str, tag, inputs: dict, deadline_s: float | None = None) -> None:
        now = time.monotonic()
        with self.intake:       # as the server admits: under its intake lock
            self.residency.submit(Submission(model, inputs, now,
                                             None if deadline_s is None else now + deadline_s,
                                             reply_to=tag))

    def wait(self, *tags):
        """Step the engine until every tag is answered; their results."""
        give_up = time.monotonic() + HANG_S
        while not all(t in self.results for t in tags):
            assert time.monotonic() < give_up, \
                f"unanswered: {[t for t in tags if t not in self.results]}"
            self.engine.step(0.005)
            self.after_step()
        return [self.results.pop(t) for t in tags]

    def state(self, model: str) -> str:
        return self.residency.of(model)["state"]


def ok(result) -> np.ndarray:
    assert result.error is None, result.error
    return result.outputs
