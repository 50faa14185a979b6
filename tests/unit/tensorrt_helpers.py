"""Helpers of the TensorRT backend suites (test_tensorrt_backend.py, test_tensorrt_loading.py):
a fake two-slice engine model and a run of it through the real Engine."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgesched.engine import Engine, Submission
from edgesched.modelfiles.manifest import Manifest, SliceEntry, write_manifest
from edgesched.sched import make_policy
from edgesched.types import ModelInfo, Priority, TensorSpec
from tests import fakes_cuda
from tests.fakes_cuda import write_engine

MODEL = "twostep"
WAITER = "edgesched-trt-wait-"


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


def two_slice_model(directory: Path, *, batch: int | None = 1, engines: bool = True,
                    trt_major: int = 10, profiles: int | list | None = None) -> Path:
    """x[batch,4] -> slice 0 (h = x + 1) -> slice 1 (y = h + 10); batch None: dynamic, with
    `profiles` optimization profiles per engine (fakes_cuda.engine_blob)."""
    directory.mkdir(parents=True, exist_ok=True)
    dim = -1 if batch is None else batch
    entries = []
    for index, (src, dst, add) in enumerate([("x", "h", 1.0), ("h", "y", 10.0)]):
        (directory / f"slice_{index:02d}.onnx").write_bytes(b"")   # the manifest's ONNX file
        engine = f"slice_{index:02d}.engine" if engines else None
        if engine:
            write_engine(directory / engine, f"slice_{index:02d}",
                         {src: ("float32", (dim, 4))}, {dst: ("float32", (dim, 4), src, add)},
                         trt_major, profiles=profiles)
        entries.append(SliceEntry(index, f"slice_{index:02d}.onnx", (src,), (dst,), {}, engine))
    write_manifest(Manifest(MODEL, "twostep.onnx", (TensorSpec("x", "float32", (batch, 4)),),
                            (TensorSpec("y", "float32", (batch, 4)),), tuple(entries),
                            directory))
    return directory


def run_engine(backend, model_dir: Path, inputs: list[np.ndarray], *, instances: int = 2,
               policy: str = "greedy", timeout_s: float = 5.0) -> dict:
    loaded = backend.load(MODEL, model_dir, instances)
    info = ModelInfo(MODEL, loaded.inputs, loaded.outputs, loaded.num_slices, 1000.0,
                     Priority.BEST_EFFORT, instances, str(model_dir))
    results: dict = {}
    engine = Engine(backend, {MODEL: info}, make_policy(policy), queue_depth=64,
                    on_result=lambda r: results.__setitem__(r.reply_to, r))
    for tag, x in enumerate(inputs):
        engine.submit(Submission(MODEL, {"x": x}, time.monotonic(), reply_to=tag))
    deadline = time.monotonic() + timeout_s
    while len(results) < len(inputs):
        assert time.monotonic() < deadline, f"only {len(results)} of {len(inputs)} answered"
        engine.step(0.05)
    return results


def inputs(n: int, batch: int = 1) -> list[np.ndarray]:
    return [np.full((batch, 4), float(k), np.float32) + np.arange(4, dtype=np.float32)
            for k in range(n)]


_STREAM_ARG = {"execute_async_v3": 2, "cuEventRecord": 2, "cuMemcpyHtoDAsync": 4,
               "cuMemcpyDtoHAsync": 4}


def stream_of(call: fakes_cuda.Call) -> int:
    """The stream a recorded launch / record / copy went to."""
    return call.args[_STREAM_ARG[call.op]]
