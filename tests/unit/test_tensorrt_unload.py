"""TensorRTBackend.unload (a reload removed or replaced a model), against the CUDA fakes: the
model's execution contexts are dropped before its engines, engines another model still uses
stay, and the other model keeps running."""
from __future__ import annotations

import numpy as np

from tests.unit.tensorrt_helpers import (  # noqa: F401
    MODEL,
    inputs,
    run_engine,
    two_slice_model,
)


def test_unload_frees_contexts_then_engines_and_keeps_shared_ones(cuda, tmp_path):
    gpu = cuda.install(integrated=True).gpu
    backend = cuda.make(streams=2)
    shared = two_slice_model(tmp_path / "m")
    backend.load("other", two_slice_model(tmp_path / "o"), 1)
    backend.load("same-files", shared, 1)
    results = run_engine(backend, shared, inputs(2))      # loads MODEL from `shared`
    assert all(r.error is None for r in results.values())

    def held(model):
        pieces = backend._models[model].slices
        return ({("execution context", c.id) for p in pieces for c in p.contexts},
                {("engine", p.engine._id) for p in pieces})
    other_contexts, other_engines = held("other")
    model_contexts, model_engines = held(MODEL)
    before = len(gpu.trt_freed)
    backend.unload("other")
    # its destructors ran there and then: every context, then the engines they kept alive
    assert [kind for kind, _ in gpu.trt_freed[before:]] == \
        ["execution context"] * len(other_contexts) + ["engine"] * len(other_engines)
    assert not (other_contexts | other_engines) & set(gpu.trt_live)
    before = len(gpu.trt_freed)
    backend.unload(MODEL)
    # the engines "same-files" shares with MODEL stay loaded and serve
    assert [kind for kind, _ in gpu.trt_freed[before:]] == ["execution context"] * 4
    assert not model_contexts & set(gpu.trt_live) and model_engines <= set(gpu.trt_live)
    results = run_engine(backend, tmp_path / "m", inputs(1))
    np.testing.assert_array_equal(results[0].outputs["y"], inputs(1)[0] + 11)
