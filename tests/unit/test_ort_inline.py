"""ONNX Runtime backend: a short launch with nothing else in flight runs on the engine's
thread inside its next poll; anything else runs on its stream's worker."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgesched.types import Launch
from tests.models import EXAMPLES, build_dynamic_convnet, dynamic_input, example_input

pytest.importorskip("onnxruntime")


class _Recording:
    """A session that notes the thread each run happened on."""

    def __init__(self, inner, threads: list):
        self._inner, self._threads = inner, threads

    def run(self, *args):
        self._threads.append(threading.current_thread().name)
        return self._inner.run(*args)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def backend():
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    b = OnnxRuntimeBackend(2)
    yield b
    b.close()


def _record(backend, model: str) -> list:
    threads: list = []
    for piece in backend._slices[model]:
        piece.session = _Recording(piece.session, threads)
    return threads


def _run(backend, request_id: int, model: str, inputs: dict, stream: int = 0):
    backend.stage(request_id, model, inputs)
    backend.launch(Launch(request_id, model, 0, stream))
    done = []
    while not done:
        done += backend.poll(5.0)
    return done


def test_a_repeated_short_launch_runs_on_the_calling_thread(backend, monkeypatch):
    from edgesched.backends import onnxruntime
    monkeypatch.setattr(onnxruntime, "INLINE_MAX_S", 10.0)   # every run counts as short
    backend.load("attention", EXAMPLES / "attention.onnx", 1)
    threads = _record(backend, "attention")
    first = _run(backend, 1, "attention", example_input("attention", 0))
    second = _run(backend, 2, "attention", example_input("attention", 1))
    me = threading.current_thread().name
    assert threads[0] != me and threads[0].startswith("edgesched-stream-")
    assert threads[1] == me
    assert first[0].error is None and second[0].error is None
    assert second[0].started_s <= second[0].finished_s
    # Same outputs as the worker's run of the same inputs.
    again = _run(backend, 3, "attention", example_input("attention", 1), stream=1)
    a, b = backend.fetch(2), backend.fetch(3)
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    assert again[0].launch.request_id == 3


def test_new_shapes_and_slow_runs_stay_on_a_worker(backend, monkeypatch, tmp_path):
    from edgesched.backends import onnxruntime
    path = build_dynamic_convnet(tmp_path / "dyn.onnx")
    backend.load("dyn", path, 1)
    threads = _record(backend, "dyn")
    monkeypatch.setattr(onnxruntime, "INLINE_MAX_S", 10.0)
    _run(backend, 1, "dyn", dynamic_input(1, 32))
    _run(backend, 2, "dyn", dynamic_input(2, 32))      # a shape not run before: a worker
    _run(backend, 3, "dyn", dynamic_input(1, 32))      # run before, short: inline
    monkeypatch.setattr(onnxruntime, "INLINE_MAX_S", 0.0)
    _run(backend, 4, "dyn", dynamic_input(1, 32))      # longer than the bound: a worker
    me = threading.current_thread().name
    assert [t == me for t in threads] == [False, False, True, False]


def test_a_kept_launch_that_another_joins_runs_beside_it_on_the_workers(backend, monkeypatch):
    from edgesched.backends import onnxruntime
    monkeypatch.setattr(onnxruntime, "INLINE_MAX_S", 10.0)
    backend.load("attention", EXAMPLES / "attention.onnx", 1)
    _run(backend, 1, "attention", example_input("attention", 0))
    threads = _record(backend, "attention")
    for rid, stream in ((2, 0), (3, 1)):                 # one engine step's two launches
        backend.stage(rid, "attention", example_input("attention", rid))
        backend.launch(Launch(rid, "attention", 0, stream))
    done = []
    while len(done) < 2:
        done += backend.poll(5.0)
    assert sorted(c.launch.request_id for c in done) == [2, 3]
    assert threading.current_thread().name not in threads and len(threads) == 2
    # Nothing is left counted in flight: the next lone short launch runs inline again.
    _run(backend, 4, "attention", example_input("attention", 4))
    assert threads[-1] == threading.current_thread().name


def test_an_inline_run_that_fails_fails_only_its_request(backend, monkeypatch):
    from edgesched.backends import onnxruntime
    monkeypatch.setattr(onnxruntime, "INLINE_MAX_S", 10.0)
    backend.load("attention", EXAMPLES / "attention.onnx", 1)
    good = example_input("attention", 0)
    _run(backend, 1, "attention", good)
    # Same shapes, so it is kept inline; the wrong dtype makes ONNX Runtime refuse it.
    bad = {n: a.astype(np.float64) for n, a in good.items()}
    done = _run(backend, 2, "attention", bad)
    assert done[0].error is not None and done[0].rejected
    assert _run(backend, 3, "attention", good)[0].error is None
