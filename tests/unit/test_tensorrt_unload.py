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
    cuda.install(integrated=True)
    backend = cuda.make(streams=2)
    try:
        shared = two_slice_model(tmp_path / "m")
        backend.load("other", two_slice_model(tmp_path / "o"), 1)
        backend.load("same-files", shared, 1)
        results = run_engine(backend, shared, inputs(2))      # loads MODEL from `shared`
        assert all(r.error is None for r in results.values())
        pieces = backend._models[MODEL].slices
        order = []
        for piece in pieces:
            contexts = piece.contexts

            class Watch(list):
                def clear(self, contexts=contexts):
                    assert all(p.engine is not None for p in pieces), "engine before contexts"
                    order.append("contexts")
                    contexts.clear()
            piece.contexts = Watch(contexts)
        engines_before = set(map(id, backend._loader._engines.values()))
        backend.unload("other")
        assert "other" not in backend._models
        assert set(map(id, backend._loader._engines.values())) < engines_before
        backend.unload(MODEL)
        assert order == ["contexts", "contexts"]
        assert all(p.engine is None and not p.free for p in pieces)
        # the engines "same-files" shares with MODEL stay loaded and serve
        kept = {id(p.engine) for p in backend._models["same-files"].slices}
        assert kept <= set(map(id, backend._loader._engines.values()))
        results = run_engine(backend, tmp_path / "m", inputs(1))
        np.testing.assert_array_equal(results[0].outputs["y"], inputs(1)[0] + 11)
    finally:
        backend.close()
