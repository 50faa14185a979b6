"""ONNX Runtime backend: a short launch with nothing else in flight runs on the engine's
thread inside its next poll; anything else runs on its stream's worker."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from edgesched.types import Launch
from tests.models import EXAMPLES, build_dynamic_convnet, dynamic_input, example_input

onnx = pytest.importorskip("onnx")

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


def _record(backend, model: str, threads: list | None = None) -> list:
    threads = [] if threads is None else threads
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
    from edgesched.backends import ort_inline
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)   # every run counts as short
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
    from edgesched.backends import ort_inline
    path = build_dynamic_convnet(tmp_path / "dyn.onnx")
    backend.load("dyn", path, 1)
    threads = _record(backend, "dyn")
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)
    _run(backend, 1, "dyn", dynamic_input(1, 32))
    _run(backend, 2, "dyn", dynamic_input(2, 32))      # a shape not run before: a worker
    _run(backend, 3, "dyn", dynamic_input(1, 32))      # run before, short: inline
    monkeypatch.setattr(ort_inline, "MAX_S", 0.0)
    _run(backend, 4, "dyn", dynamic_input(1, 32))      # longer than the bound: a worker
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)
    backend.unload("dyn")                              # a model loaded again is new
    backend.load("dyn", path, 1)
    _record(backend, "dyn", threads)
    _run(backend, 5, "dyn", dynamic_input(1, 32))
    me = threading.current_thread().name
    assert [t == me for t in threads] == [False, False, True, False, False]


def test_a_kept_launch_that_another_joins_runs_beside_it_on_the_workers(backend, monkeypatch):
    from edgesched.backends import ort_inline
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)
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
    from edgesched.backends import ort_inline
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)
    backend.load("attention", EXAMPLES / "attention.onnx", 1)
    good = example_input("attention", 0)
    _run(backend, 1, "attention", good)
    # Same shapes, so it is kept inline; the wrong dtype makes ONNX Runtime refuse it.
    bad = {n: a.astype(np.float64) for n, a in good.items()}
    done = _run(backend, 2, "attention", bad)
    assert done[0].error is not None and done[0].rejected
    assert _run(backend, 3, "attention", good)[0].error is None


def _nonzero_model(path):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["idx"])],
        "nonzero", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, "k"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_graph_whose_inputs_values_set_its_run_time_never_runs_inline(backend, monkeypatch,
                                                                        tmp_path):
    from edgesched.backends import ort_inline
    monkeypatch.setattr(ort_inline, "MAX_S", 10.0)
    path = _nonzero_model(tmp_path / "nz.onnx")
    assert ort_inline.data_dependent(path) and ort_inline.data_dependent(path.read_bytes())
    assert not any(ort_inline.data_dependent(EXAMPLES / f"{m}.onnx")
                   for m in ("convnet", "depthwise", "attention"))
    backend.load("nz", path, 1)
    threads = _record(backend, "nz")
    x = {"x": np.array([0.0, 1.0, -2.0, 3.0], np.float32)}
    for rid in (1, 2, 3):
        assert _run(backend, rid, "nz", x)[0].error is None
    assert threading.current_thread().name not in threads
    np.testing.assert_array_equal(backend.fetch(3)["idx"], [[1, 3]])


def test_the_longest_run_decides_and_the_history_stays_bounded(monkeypatch):
    from edgesched.backends import ort_inline
    runs = ort_inline.InlineRuns()
    key = ("m", 0, ((1, 3),))
    assert not runs.allowed(key)                         # never ran: a worker first
    runs.ran(key, ort_inline.MAX_S / 2)
    assert runs.allowed(key)
    runs.ran(key, ort_inline.MAX_S * 5)                  # once long: never inline again
    runs.ran(key, ort_inline.MAX_S / 10)
    assert not runs.allowed(key)
    runs.ran(("n", 0, ()), 0.0)
    runs.forget("n")
    assert not runs.allowed(("n", 0, ()))
    monkeypatch.setattr(ort_inline, "_HISTORY", 8)
    for i in range(20):                                  # one new shape after another
        runs.ran(("m", 0, ((i,),)), 0.0)
    assert len(runs._longest) <= 8


def test_a_file_is_scanned_once_per_version_not_at_every_reload(backend, monkeypatch, tmp_path):
    from edgesched.backends import ort_inline
    scans = []
    scan = ort_inline.data_dependent
    monkeypatch.setattr(ort_inline, "data_dependent", lambda source: scans.append(1) or
                        scan(source))
    path = tmp_path / "a.onnx"
    path.write_bytes((EXAMPLES / "attention.onnx").read_bytes())
    for _ in range(3):                                   # evicted and loaded again
        backend.load("attention", path, 1)
        backend.unload("attention")
    assert len(scans) == 1
    path.write_bytes(path.read_bytes())                  # rebuilt: another version
    os.utime(path, ns=(1, 1))
    backend.load("attention", path, 1)
    assert len(scans) == 2
