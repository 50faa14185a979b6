"""An Engine over the fake backend, for the engine tests (tests import it as
`tests.engine_harness`). Engine request ids are handed out in submission order starting at 1;
the harness relies on that to aim the fake's fault injection at one request."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np

from edgesched.engine import Engine, Result, Submission
from edgesched.errors import RequestError
from edgesched.sched import make_policy
from edgesched.types import ModelInfo, Priority
from tests.fakes import FakeBackend

RT, BE = Priority.REALTIME, Priority.BEST_EFFORT
POLICY_NAMES = ["fifo", "greedy", "priority"]


@dataclass
class Answer:
    at_s: float          # fake clock when on_result was called
    result: Result


class Harness:
    """An Engine over a FakeBackend; reply_to is a tag per submission."""

    def __init__(self, models: list[ModelInfo], policy: str = "greedy", *, streams: int = 2,
                 queue_depth: int = 64, engine_kw: dict | None = None, **fake_kw):
        self.models = {m.name: m for m in models}
        self.fake = FakeBackend(streams, models=self.models, **fake_kw)
        self.answers: dict[int, list[Answer]] = {}
        self.submitted: dict[int, Submission] = {}
        self._tags = itertools.count(1)
        self._lock = threading.Lock()
        self.engine = Engine(self.fake, self.models, make_policy(policy),
                             queue_depth=queue_depth, on_result=self._on_result,
                             clock=self.fake.clock, **(engine_kw or {}))

    def _on_result(self, result: Result) -> None:
        with self._lock:
            self.answers.setdefault(result.reply_to, []).append(Answer(self.fake.clock(), result))

    def submit(self, model: str, *, x: int | None = None, deadline_s: float | None = None,
               priority: Priority | None = None, arrival_s: float | None = None) -> int:
        tag = next(self._tags)
        sub = Submission(model, {"x": np.array([tag if x is None else x], dtype=np.int64)},
                         self.fake.clock() if arrival_s is None else arrival_s,
                         deadline_s, priority, reply_to=tag)
        with self._lock:
            self.submitted[tag] = sub
        self.engine.submit(sub)
        return tag

    def step(self, max_wait_s: float = 1.0) -> None:
        self.engine.step(max_wait_s)

    def run(self, max_steps: int = 10_000, max_wait_s: float = 1.0) -> None:
        for _ in range(max_steps):
            if self.engine.idle:
                return
            self.engine.step(max_wait_s)
        raise AssertionError("the engine did not go idle")

    def answer(self, tag: int) -> Answer:
        answers = self.answers.get(tag, [])
        assert len(answers) == 1, f"submission {tag} answered {len(answers)} times"
        return answers[0]

    def result(self, tag: int) -> Result:
        return self.answer(tag).result

    def error(self, tag: int, cls: type[RequestError]) -> RequestError:
        result = self.result(tag)
        assert isinstance(result.error, cls), f"submission {tag}: {result.error!r}"
        assert result.outputs is None and result.timings is None
        assert "\n" not in str(result.error) and str(result.error)
        return result.error

    def ok(self, tag: int) -> Result:
        result = self.result(tag)
        assert result.error is None, f"submission {tag}: {result.error!r}"
        n = self.models[result.model].num_slices
        np.testing.assert_array_equal(result.outputs["y"], [tag, *range(n)])
        return result

    def counters(self, model: str) -> dict:
        return self.engine.stats.snapshot()["models"][model]

    def assert_clean(self) -> None:
        """Every submission answered once; nothing left in the engine or the backend."""
        assert set(self.answers) == set(self.submitted)
        for tag in self.submitted:
            self.answer(tag)
        assert self.engine.idle
        assert len(self.engine.state) == 0 and not self.engine.state.running
        assert self.engine.state.free_streams() == list(range(self.fake.num_streams))
        assert self.fake.live_requests() == set()
        assert self.fake.running() == []
        for model in self.models:
            assert self.engine.state.pending(model) == 0
            assert self.counters(model)["queue_depth"] == 0


def engine_id(tag: int) -> int:
    return tag   # ids are given in submission order, starting at 1, like the harness's tags


