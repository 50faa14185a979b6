"""What the TensorRT backend frees, and in what order, against the CUDA fakes (which check each
destructor: in the primary context, before its release, never while a launch runs, and the
streams and events TensorRT used only after every TensorRT object; fakes_cuda/gpu.py)."""
from __future__ import annotations

import numpy as np

from tests.unit.tensorrt_helpers import MODEL, inputs, run_engine, two_slice_model

CYCLES = 200


def test_200_load_run_unload_cycles_leave_nothing_behind(cuda, tmp_path):
    gpu = cuda.install(integrated=False).gpu      # discrete: device buffers + pinned staging
    backend = cuda.make(streams=2)
    model = two_slice_model(tmp_path / "m")
    baseline = dict(gpu.trt_live)                 # the runtime
    for k in range(CYCLES):
        results = run_engine(backend, model, inputs(2), instances=2)
        np.testing.assert_array_equal(results[1].outputs["y"], inputs(2)[1] + 11)
        backend.unload(MODEL)
        assert gpu.trt_live == baseline, f"cycle {k}: {set(gpu.trt_live) - set(baseline)}"
        # request buffers are pooled by size, so they stay what two requests in flight at
        # once hold: x and y as device memory + a pinned copy (2 each), h on the device (1)
        assert len(gpu.live_allocations()) <= 2 * (2 + 2 + 1)
    assert gpu.violations == []


def test_close_frees_buffers_then_contexts_engines_runtime_then_events_and_streams(cuda,
                                                                                   tmp_path):
    gpu = cuda.install(integrated=False).gpu
    backend = cuda.make(streams=2)
    run_engine(backend, two_slice_model(tmp_path / "m"), inputs(3), instances=2)
    mark = len(gpu.calls)
    backend.close()
    calls = gpu.calls[mark:]

    def at(op, kind=None):
        return [i for i, c in enumerate(calls) if c.op == op and (kind is None or
                                                                  c.args[0] == kind)]
    frees, contexts = at("free"), at("trt.destroy", "execution context")
    engines, runtime = at("trt.destroy", "engine"), at("trt.destroy", "runtime")
    last = at("cuEventDestroy") + at("cuStreamDestroy")
    released = at("cuDevicePrimaryCtxRelease")
    assert frees and len(contexts) == 4 and len(engines) == 2 and len(runtime) == 1
    assert max(frees) < min(contexts) and max(contexts) < min(engines)
    assert max(engines) < min(runtime) < min(last) and max(last) < min(released)
    assert gpu.trt_live == {} and gpu.live_allocations() == []
