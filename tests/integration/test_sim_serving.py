"""A real server on the simulated Jetson (backend: sim, wall-clock mode) answers every request."""
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from edgesched import Client
from edgesched.config import parse_config
from edgesched.serve.server import Server

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("policy", ["greedy", "interference"])
def test_every_request_is_answered_on_the_simulated_device(policy):
    data = {"device": {"backend": "sim", "sim_device": "orin-nano", "streams": 3},
            "scheduler": {"policy": policy},
            "models": [
                {"name": "convnet", "path": str(ROOT / "engines/examples/convnet_sliced"),
                 "slo_ms": 50, "priority": "realtime"},
                {"name": "classifier", "path": str(ROOT / "engines/workloads/classifier.onnx"),
                 "slo_ms": 100}]}
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/sim.sock"
    inputs = {"convnet": {"image": np.zeros((1, 3, 96, 96), np.float32)},
              "classifier": {"image": np.zeros((1, 3, 224, 224), np.float32)}}
    answers: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def drive(client: Client, model: str) -> None:
        for _ in range(25):
            out = client.infer(model, inputs[model])
            with lock:
                answers.append((model, out))

    with Server(parse_config(data, "sim.yaml", ROOT), endpoint=endpoint) as server, \
            Client(endpoint, timeout_s=30) as client:
        threads = [threading.Thread(target=drive, args=(client, m))
                   for m in ("convnet", "classifier") for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = client.stats()
    assert len(answers) == 100
    shapes = {"convnet": {"logits": (1, 10)}, "classifier": {"logits": (1, 1000)}}
    for model, out in answers:
        assert {k: v.shape for k, v in out.items()} == shapes[model]
        assert all(not v.any() for v in out.values())        # simulated outputs are zeros
    assert stats["backend"] == "sim" and server.backend.name == "sim"
    assert {m: s["completed"] for m, s in stats["models"].items()} == {"convnet": 50,
                                                                      "classifier": 50}
