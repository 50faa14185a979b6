"""A served model with a batch range: any batch in it is one request, one batch; a shape
outside it is InvalidInput at the server (never a device failure); a model without a range
still takes whatever it accepts. On ONNX Runtime (real outputs) and the simulated device."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgesched import Client, InvalidInput  # noqa: E402
from edgesched.config import parse_config  # noqa: E402
from edgesched.modelfiles.slicing import slice_model  # noqa: E402
from edgesched.serve.server import Server  # noqa: E402
from edgesched.shapes import ShapeError, ShapeRange  # noqa: E402
from tests.integration.conftest import CLIENT_TIMEOUT_S, serving  # noqa: E402
from tests.models import build_dynamic_convnet, dynamic_input  # noqa: E402

SIZE = 64
BATCHES = {"min": [1, 3, SIZE, SIZE], "opt": [4, 3, SIZE, SIZE], "max": [8, 3, SIZE, SIZE]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranges")
    model = build_dynamic_convnet(root / "det.onnx")
    ranged = {"image": ShapeRange.from_json(BATCHES)}
    manifest, _ = slice_model(model, 3, root / "det_sliced", shapes=ranged)
    return model, manifest.directory


@pytest.fixture(scope="module")
def ort_server(files):
    model, sliced = files
    models = [{"name": "det", "path": str(model), "slo_ms": 1000, "shapes": {"image": BATCHES}},
              {"name": "det_sliced", "path": str(sliced), "slo_ms": 1000,
               "shapes": {"image": BATCHES}},
              {"name": "det_free", "path": str(model), "slo_ms": 1000}]
    with serving(models, streams=2) as served:
        yield served


@pytest.mark.parametrize("name", ["det", "det_sliced"])
def test_onnx_runtime_serves_every_batch_in_the_range(ort_server, ort_run, files, name):
    with Client(ort_server[1], timeout_s=CLIENT_TIMEOUT_S) as client:
        for batch in (1, 4, 8):
            inputs = dynamic_input(batch, SIZE, seed=batch)
            got = client.infer(name, inputs)["logits"]
            assert got.shape == (batch, 10)
            np.testing.assert_allclose(got, ort_run(files[0], inputs)["logits"],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch, size", [(9, SIZE), (1, SIZE + 32), (4, SIZE // 2)])
def test_a_shape_outside_the_range_is_invalid_input_and_the_model_stays_healthy(
        ort_server, batch, size):
    server, endpoint = ort_server
    with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        with pytest.raises(InvalidInput) as e:
            client.infer("det", dynamic_input(batch, size))
        assert str(e.value) == (
            f"model 'det': input 'image': shape {(batch, 3, size, size)} is outside the "
            f"configured range 1x3x{SIZE}x{SIZE}/4x3x{SIZE}x{SIZE}/8x3x{SIZE}x{SIZE} "
            "(min/opt/max)")
        assert client.infer("det", dynamic_input(2, SIZE))["logits"].shape == (2, 10)
        stats = client.stats()["models"]["det"]
    assert stats["invalid"] >= 1 and stats["failed"] == 0


def test_a_model_without_a_range_takes_what_it_accepts(ort_server):
    with Client(ort_server[1], timeout_s=CLIENT_TIMEOUT_S) as client:
        assert client.infer("det_free", dynamic_input(9, 48))["logits"].shape == (9, 10)
        described = {m["name"]: m for m in client.models()}
    assert described["det"]["shapes"] == {"image": BATCHES}
    assert "shapes" not in described["det_free"]


def test_a_range_for_an_input_the_model_lacks_stops_start_up(files, tmp_path):
    models = [{"name": "det", "path": str(files[0]), "slo_ms": 1000,
               "shapes": {"img": [1, 3, SIZE, SIZE]}}]
    with pytest.raises(ShapeError) as e:
        with serving(models):
            pass
    assert str(e.value) == "model 'det' has no input 'img' (its inputs: image)"


def test_the_simulated_device_serves_the_range_at_each_batch(files):
    model, sliced = files
    data = {"device": {"backend": "sim", "sim_device": "orin-nano", "streams": 2},
            "telemetry": "none",
            "models": [{"name": "det", "path": str(model), "slo_ms": 1000,
                        "shapes": {"image": BATCHES}},
                       {"name": "det_sliced", "path": str(sliced), "slo_ms": 1000}]}
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/sim.sock"
    with Server(parse_config(data, "sim.yaml", Path(".")), endpoint=endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        for name in ("det", "det_sliced"):
            for batch in (1, 4):
                out = client.infer(name, dynamic_input(batch, SIZE))
                assert out["logits"].shape == (batch, 10) and not out["logits"].any()
        with pytest.raises(InvalidInput, match="outside the configured range"):
            client.infer("det", dynamic_input(9, SIZE))


def test_synthetic_runs_on_onnx_runtime_feed_zeros_at_opt(files):
    # what calibrate runs on the CPU: each slice alone, on zeros of its inputs' opt shapes
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    from edgesched.types import Launch
    backend = OnnxRuntimeBackend(1)
    try:
        backend.load("det", files[0], 1, shapes={"image": ShapeRange.from_json(BATCHES)})
        backend.load("sliced", files[1], 1)                   # the manifest's range
        assert backend._slices["det"][0].zeros()["image"].shape == (4, 3, SIZE, SIZE)
        for index, piece in enumerate(backend._slices["sliced"]):
            assert all(z.shape[0] == 4 for z in piece.zeros().values())
            backend.stage(index, "sliced", {})
            backend.launch(Launch(index, "sliced", index, 0))
            (done,) = backend.poll(CLIENT_TIMEOUT_S)
            assert done.error is None
        assert backend.fetch(2)["logits"].shape == (4, 10)
    finally:
        backend.close()
