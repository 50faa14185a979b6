"""The engine carrying batches out (engine.py) over a tiny fake backend: a batch is staged
once, its outputs split back per member; a batch the backend refuses to stage runs its head
alone and the others after it; drift never sees a batch's slice times."""
from __future__ import annotations

import logging

import numpy as np

from edgesched.engine import Engine, Submission
from edgesched.errors import InvalidInput
from edgesched.sched import make_policy
from edgesched.sched.profile import Profile
from edgesched.types import BatchConfig, Completion, ModelInfo, Priority, TensorSpec

X = TensorSpec("x", "float32", (None, 2))
Y = TensorSpec("y", "float32", (None, 2))


class RowsBackend:
    """Doubles its input; each launch takes 1 ms of a virtual clock per call to poll; refuses
    to stage more than `max_rows` rows (as a TensorRT profile would)."""

    name = "rows"
    num_streams = 2

    def __init__(self, max_rows: int = 64):
        self.max_rows, self.now, self.staged, self.running = max_rows, 0.0, {}, []
        self.stage_calls: list[int] = []

    def stage(self, rid, model, inputs):
        rows = inputs["x"].shape[0]
        if rows > self.max_rows:
            raise InvalidInput(f"{rows} rows: the engine's profile takes at most {self.max_rows}")
        self.stage_calls.append(rows)
        self.staged[rid] = inputs["x"] * 2

    def launch(self, launch):
        self.running.append((launch, self.now))

    def poll(self, timeout_s):
        done, self.running = self.running, []
        self.now += 0.001
        return [Completion(launch, start, self.now) for launch, start in done]

    def fetch(self, rid):
        return {"y": self.staged.pop(rid)}

    def release(self, rid):
        self.staged.pop(rid, None)

    def bind(self, doorbell):
        pass

    def unload(self, model):
        pass

    def close(self):
        pass


def engine(backend, max_size=4):
    info = ModelInfo("m", (X,), (Y,), 2, 1000.0, Priority.REALTIME, 1,
                     batch=BatchConfig(max_size))
    results = []
    profile = Profile("fake", {}, batch_us={"m": {1: (100.0, 100.0), 4: (200.0, 200.0)}})
    e = Engine(backend, {"m": info}, make_policy("fifo"), queue_depth=16,
               on_result=results.append, clock=lambda: backend.now, profile=profile)
    return e, results


def submit_rows(e, backend, values):
    for i, v in enumerate(values):
        e.submit(Submission("m", {"x": np.full((1, 2), v, np.float32)}, backend.now,
                            reply_to=i))


def run(e, results, n):
    for _ in range(100):
        if len(results) == n:
            return
        e.step(0.0)
    raise AssertionError(f"{len(results)} of {n} answered")


def test_a_batch_is_staged_once_and_split_back():
    backend = RowsBackend()
    e, results = engine(backend)
    submit_rows(e, backend, [1, 2, 3])
    run(e, results, 3)
    assert backend.stage_calls == [1, 1, 1, 3]        # each at admission, then the batch
    assert {r.reply_to: r.outputs["y"].tolist() for r in results} == {
        0: [[2, 2]], 1: [[4, 4]], 2: [[6, 6]]}
    assert not backend.staged                          # every copy freed
    assert e.stats.snapshot()["models"]["m"]["completed"] == 3


def test_a_batch_the_backend_refuses_runs_its_members_alone(caplog):
    backend = RowsBackend(max_rows=1)
    e, results = engine(backend)
    submit_rows(e, backend, [1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="edgesched.engine"):
        run(e, results, 3)
    assert all(r.error is None for r in results)
    assert {r.reply_to: r.outputs["y"].tolist() for r in results} == {
        0: [[2, 2]], 1: [[4, 4]], 2: [[6, 6]]}
    assert "batching is off for this model" in caplog.text
    assert backend.stage_calls == [1, 1, 1, 1]        # the head restaged alone
    assert not backend.staged
