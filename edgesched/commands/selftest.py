"""`edgesched selftest`: can this machine run edgesched on its GPU? Says what it found.

Checks in order, each printing one line: platform, TensorRT, CUDA device (name, SMs, driver and
runtime versions, integrated or not, stream priority range), telemetry, then builds an engine
from a shipped example model, runs two requests on two streams at once through the engine
loop, and compares the output with ONNX Runtime when installed. The first missing
prerequisite ends it with the reason and a non-zero exit.
"""
from __future__ import annotations

import platform
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.paths import shipped
from edgesched.version import __version__

EXAMPLE = "engines/examples/attention.onnx"   # small, FP32-exact enough to compare
TOLERANCE = 1e-3                             # max |TensorRT - ONNX Runtime| (FP32 tactics)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _platform() -> Check:
    return Check("platform", True, f"edgesched {__version__}, Python {platform.python_version()}"
                 f", {platform.machine()}, {platform.platform(terse=True)}")


def _tensorrt() -> Check:
    from edgesched.backends import tensorrt
    if not tensorrt.available():
        return Check("tensorrt", False, "TensorRT is not importable (on a Jetson it comes "
                     "with JetPack: create the venv with --system-site-packages)")
    return Check("tensorrt", True, f"TensorRT {tensorrt.version()}")


def _cuda() -> Check:
    try:
        from edgesched.backends.tensorrt import device_report
    except ImportError:
        return Check("cuda", False, "this build's TensorRT backend has no device report")
    try:
        return Check("cuda", True, device_report())
    except Exception as e:   # driver, pycuda or cuda-python missing: the reason is the answer
        return Check("cuda", False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _telemetry() -> Check:
    try:
        from edgesched.telemetry import open_reader
        reader = open_reader("auto")
    except Exception as e:
        return Check("telemetry", True, f"none ({str(e).splitlines()[0]})")
    if reader is None:
        return Check("telemetry", True, "none found (calibration will lack EMC utilization)")
    try:
        sample = reader.read()
    finally:
        reader.close()
    return Check("telemetry", True, f"{reader.name}: GPU load {sample.gpu_load_pct}%, EMC "
                 f"{sample.emc_util_pct}%, nvpmodel {sample.nvpmodel}")


def _run_on_two_streams() -> Check:
    from edgesched.backends.tensorrt import BuildOptions, TensorRTBackend, build_engine
    from edgesched.engine import Engine, Submission
    from edgesched.sched import make_policy
    from edgesched.types import ModelInfo, Priority
    source = shipped(EXAMPLE)
    with tempfile.TemporaryDirectory(prefix="edgesched-selftest-") as tmp:
        engine_file = build_engine(source, Path(tmp) / "selftest.engine", BuildOptions())
        backend = TensorRTBackend(streams=2)
        try:
            loaded = backend.load("selftest", engine_file, instances=2)
            info = ModelInfo("selftest", loaded.inputs, loaded.outputs, loaded.num_slices,
                             1000.0, Priority.BEST_EFFORT, 2)
            results, done = [], threading.Event()

            def collect(result) -> None:
                results.append(result)
                if len(results) == 2:
                    done.set()
            engine = Engine(backend, {"selftest": info}, make_policy("greedy"), queue_depth=4,
                            on_result=collect)
            rng = np.random.default_rng(0)
            inputs = [{t.name: rng.random([d or 1 for d in t.shape]).astype(t.dtype)
                       for t in loaded.inputs} for _ in range(2)]
            import time
            for x in inputs:             # both queued before the first step: two streams
                engine.submit(Submission("selftest", x, time.monotonic()))
            give_up = time.monotonic() + 30.0
            while not done.is_set() and time.monotonic() < give_up:
                engine.step(0.05)
        finally:
            backend.close()
    if len(results) < 2 or any(r.error for r in results):
        return Check("two streams", False, "requests failed or timed out: "
                     + "; ".join(str(r.error) for r in results if r.error))
    detail = f"2 requests on 2 streams: {results[0].timings.device_ms:.2f} / " \
             f"{results[1].timings.device_ms:.2f} ms on the device"
    return Check("two streams", True, detail + _compare(source, inputs, results))


def _compare(source: Path, inputs: list, results: list) -> str:
    try:
        import onnxruntime
    except ImportError:
        return " (ONNX Runtime not installed: output not compared)"
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x, result in zip(inputs, results):
        for name, ref in zip([o.name for o in session.get_outputs()], session.run(None, x)):
            worst = max(worst, float(np.max(np.abs(result.outputs[name] - ref))))
    if worst > TOLERANCE:
        raise AssertionError(f"TensorRT and ONNX Runtime differ by {worst:.2e} (> {TOLERANCE})")
    return f"; matches ONNX Runtime (max |diff| {worst:.1e})"


CHECKS: list[Callable[[], Check]] = [_platform, _tensorrt, _cuda, _telemetry,
                                     _run_on_two_streams]


def selftest(print_line: Callable[[str], None] = print) -> int:
    """Run the checks, printing one line each; 0 when all pass, 1 at the first failure."""
    for check in CHECKS:
        try:
            result = check()
        except Exception as e:   # any failure is reported as that check's one line
            result = Check(check.__name__.strip("_"), False,
                           f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        print_line(f"{'ok  ' if result.ok else 'FAIL'} {result.name}: {result.detail}")
        if not result.ok:
            return 1
    return 0
