"""Models cut by the slicer, served by the real server beside the same models uncut.

A Client must get the same outputs from both (within 1e-5), and MODELS must report the
slice count. Covers a residual chain, the shipped convnet example, a model with two inputs and
two outputs (one made mid-graph), an IR-3 model (initializers in graph.input), and a model with
`If` nodes whose branches read tensors from earlier slices (with a bool input on the wire).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from edgesched import Client  # noqa: E402
from edgesched.modelfiles.manifest import read_manifest  # noqa: E402
from edgesched.modelfiles.slicing import slice_model  # noqa: E402
from tests import graphs  # noqa: E402
from tests.integration.conftest import CLIENT_TIMEOUT_S, serving  # noqa: E402
from tests.models import EXAMPLES, example_input  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}
SLICES = {"residual": 3, "convnet": 3, "two_io": 4, "ir3": 3, "if_input": 4}


def _feeds(name: str, seed: int) -> dict[str, np.ndarray]:
    if name == "convnet":
        return example_input("convnet", seed)
    return graphs.ALL_KINDS[name]().feeds(seed)


@pytest.fixture(scope="module")
def sliced_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (the whole .onnx file, its sliced directory)."""
    root = tmp_path_factory.mktemp("sliced_serving")
    out = {}
    for name, parts in SLICES.items():
        if name == "convnet":
            whole = EXAMPLES / "convnet.onnx"
        else:
            whole = root / f"{name}.onnx"
            onnx.save(graphs.ALL_KINDS[name]().model, str(whole))
        manifest, _ = slice_model(whole, parts, root / f"{name}_sliced")
        assert len(manifest.slices) == parts
        out[name] = (whole, manifest.directory)
    return out


@pytest.fixture(scope="module")
def sliced_server(sliced_models):
    models = []
    for name, (whole, directory) in sliced_models.items():
        models += [{"name": f"{name}_whole", "path": str(whole), "slo_ms": 1000},
                   {"name": f"{name}_sliced", "path": str(directory), "slo_ms": 1000,
                    "priority": "realtime"}]
    with serving(models, streams=2) as served:
        yield served


@pytest.fixture
def sliced_client(sliced_server):
    with Client(sliced_server[1], timeout_s=CLIENT_TIMEOUT_S) as c:
        yield c


def test_models_reports_slice_counts_and_the_same_interface(sliced_client, sliced_models):
    models = {m["name"]: m for m in sliced_client.models()}
    for name, parts in SLICES.items():
        whole, sliced = models[f"{name}_whole"], models[f"{name}_sliced"]
        assert whole["slices"] == 1
        assert sliced["slices"] == parts == len(read_manifest(sliced_models[name][1]).slices)
        assert sliced["inputs"] == whole["inputs"], name
        assert sliced["outputs"] == whole["outputs"], name


@pytest.mark.parametrize("name", sorted(SLICES))
def test_sliced_and_whole_models_answer_the_same(sliced_client, ort_run, sliced_models, name):
    whole_path = sliced_models[name][0]
    for seed in range(3):
        inputs = _feeds(name, seed)
        whole = sliced_client.infer(f"{name}_whole", inputs)
        sliced = sliced_client.infer(f"{name}_sliced", inputs)
        reference = ort_run(whole_path, inputs)
        assert set(sliced) == set(whole) == set(reference)
        for output, expected in reference.items():
            assert sliced[output].dtype == whole[output].dtype == expected.dtype
            assert sliced[output].shape == whole[output].shape == expected.shape
            np.testing.assert_allclose(sliced[output], whole[output], **TOL, err_msg=output)
            np.testing.assert_allclose(whole[output], expected, **TOL, err_msg=output)


def test_interleaved_requests_to_sliced_models_keep_their_results_apart(sliced_client):
    # Many requests in flight on two streams: each sliced request's tensors stay its own.
    names = sorted(SLICES)
    requests = [(names[i % len(names)], i % 4) for i in range(30)]
    pending = [(name, seed, sliced_client.submit(f"{name}_sliced", _feeds(name, seed)))
               for name, seed in requests]
    results = [(name, seed, p.result()) for name, seed, p in pending]
    for name, seed, got in results:
        expected = sliced_client.infer(f"{name}_whole", _feeds(name, seed))
        for output, value in expected.items():
            np.testing.assert_allclose(got[output], value, **TOL, err_msg=f"{name}/{output}")
