"""Batches on real ONNX Runtime: a model with a dynamic batch dim, sliced and whole; requests
waiting together run as one concatenated batch, and each member's reply equals what the model
gives it run alone; the statistics count every member."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgesched import Client  # noqa: E402
from edgesched.backends import load_models  # noqa: E402
from edgesched.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from edgesched.config import ModelConfig  # noqa: E402
from edgesched.engine import Engine, Submission  # noqa: E402
from edgesched.modelfiles.slicing import slice_model  # noqa: E402
from edgesched.sched import make_policy  # noqa: E402
from edgesched.sched.profile import Profile  # noqa: E402
from edgesched.shapes import ShapeRange  # noqa: E402
from edgesched.types import BatchConfig, Priority  # noqa: E402
from tests.integration.conftest import CLIENT_TIMEOUT_S, serving  # noqa: E402
from tests.models import build_dynamic_convnet, dynamic_input  # noqa: E402

SIZE = 32
RANGE = ShapeRange((1, 3, SIZE, SIZE), (1, 3, SIZE, SIZE), (8, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    model = build_dynamic_convnet(root / "det.onnx")
    manifest, _ = slice_model(model, 3, root / "det_sliced", shapes={"image": RANGE})
    return {"whole": model, "sliced": manifest.directory}


def serve(path, *, profile=None):
    backend = OnnxRuntimeBackend(2)
    entry = ModelConfig("det", path, 60_000.0, Priority.REALTIME, 1, {"image": RANGE},
                        BatchConfig(8))
    models = load_models(backend, [entry])
    results = []
    engine = Engine(backend, models, make_policy("fifo"), queue_depth=64,
                    on_result=results.append, profile=profile)
    return backend, engine, results


def drain(engine, results, count):
    for _ in range(10_000):
        if len(results) >= count:
            return
        engine.step(0.05)
    raise AssertionError(f"{len(results)} of {count} answered")


@pytest.mark.parametrize("which", ["whole", "sliced"])
def test_a_batch_answers_each_member_what_it_gets_alone(files, ort_run, which):
    sizes = [1, 2, 1, 3]                      # a client's own batch of 2 or 3 is its rows
    alone = [dynamic_input(n, SIZE, seed=i) for i, n in enumerate(sizes)]
    # measured: batches of up to 8 fit the objective (60 s)
    profile = Profile("cpu", {}, batch_us={"det": {1: (1000.0,), 8: (4000.0,)}})
    backend, engine, results = serve(files[which], profile=profile)
    try:
        for i, inputs in enumerate(alone):
            engine.submit(Submission("det", inputs, engine._clock(), reply_to=i))
        drain(engine, results, len(alone))
    finally:
        backend.close()
    assert all(r.error is None for r in results)
    for r in results:
        want = ort_run(files["whole"], alone[r.reply_to])["logits"]
        assert r.outputs["logits"].shape == (sizes[r.reply_to], 10)
        np.testing.assert_allclose(r.outputs["logits"], want, rtol=1e-4, atol=1e-5)
    # one batch ran: every member's device time is that batch's, and all started together
    assert len({round(r.timings.device_ms, 9) for r in results}) == 1
    stats = engine.stats.snapshot()["models"]["det"]
    assert stats["completed"] == len(alone) and stats["failed"] == 0


def test_without_a_profile_batches_follow_what_was_observed(files, ort_run):
    backend, engine, results = serve(files["whole"])
    try:
        first = dynamic_input(1, SIZE, seed=9)
        engine.submit(Submission("det", first, engine._clock(), reply_to=9))
        drain(engine, results, 1)             # a lone request, observed
        assert engine.life.batches.latency.seconds("det", 1) is not None
        batch = [dynamic_input(1, SIZE, seed=i) for i in range(4)]
        for i, inputs in enumerate(batch):
            engine.submit(Submission("det", inputs, engine._clock(), reply_to=i))
        drain(engine, results, 5)
    finally:
        backend.close()
    later = [r for r in results if r.reply_to != 9]
    assert len({round(r.timings.device_ms, 9) for r in later}) == 1     # one batch of 4
    for r in later:
        np.testing.assert_allclose(r.outputs["logits"],
                                   ort_run(files["whole"], batch[r.reply_to])["logits"],
                                   rtol=1e-4, atol=1e-5)
    assert engine.stats.snapshot()["models"]["det"]["completed"] == 5


def test_a_server_batches_pipelined_requests_and_replies_each_its_own(files, ort_run):
    size = 96                                 # a few ms a run: pipelined requests pile up
    shapes = {"image": {"min": [1, 3, size, size], "opt": [1, 3, size, size],
                        "max": [8, 3, size, size]}}
    models = [{"name": "det", "path": str(files["whole"]), "slo_ms": 60_000,
               "priority": "realtime", "shapes": shapes, "batch": {"max": 8}}]
    sent = [dynamic_input(1, size, seed=i) for i in range(24)]
    with serving(models, streams=2) as (server, endpoint):
        with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
            client.infer("det", sent[0])       # observed alone: batches are sized from it
            pending = [client.submit("det", inputs) for inputs in sent]
            replies = [(p.result(), p.timings) for p in pending]
            stats = client.stats()["models"]["det"]
    for inputs, (outputs, _) in zip(sent, replies):
        np.testing.assert_allclose(outputs["logits"], ort_run(files["whole"], inputs)["logits"],
                                   rtol=1e-4, atol=1e-5)
    # members of one batch share its device time: fewer distinct times than requests
    assert len({t.device_ms for _, t in replies}) < len(sent)
    assert stats["completed"] == len(sent) + 1 and stats["failed"] == 0
