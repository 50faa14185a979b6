"""Reloading the config while serving (serve/reload.py): under load nothing is lost and the
unchanged model never fails; a bad config is refused and the old set keeps serving; SIGHUP on
`edgesched serve` reloads instead of killing it; systemd hears RELOADING=1, READY=1, STATUS."""
from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgesched import Client, UnknownModel
from edgesched.commands.soak.server import ServerProcess
from edgesched.config import load_config
from edgesched.serve.reload import Reloader
from edgesched.serve.server import Server
from tests.integration.conftest import example_entries
from tests.notify_socket import notifier_for, received

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
INPUTS = {"convnet": {"image": np.zeros((1, 3, 96, 96), np.float32)},
          "depthwise": {"image": np.zeros((1, 3, 128, 128), np.float32)},
          "attention": {"tokens": np.zeros((1, 32, 64), np.float32)}}


def write_config(path: Path, endpoint: str, models: list[dict], streams: int = 2,
                 **server) -> Path:
    path.write_text(yaml.safe_dump({
        "device": {"backend": "onnxruntime", "streams": streams},
        "server": {"endpoint": endpoint, **server}, "telemetry": "none", "models": models}))
    return path


def entries(*names: str, **slo_ms: float) -> list[dict]:
    out = [e for e in example_entries() if e["name"] in names]
    for e in out:
        e["slo_ms"] = slo_ms.get(e["name"], e["slo_ms"])
    return out


@pytest.fixture
def short_dir():
    path = Path(tempfile.mkdtemp(prefix="es"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_a_reload_under_load_loses_nothing(short_dir):
    endpoint = f"ipc://{short_dir}/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint,
                          entries("convnet", "depthwise", "attention"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(short_dir / "notify"))
    notifier = notifier_for(str(short_dir / "notify"))
    server = Server(load_config(config), notifier=notifier).start()
    senders = ("convnet", "depthwise", "attention")
    stop, results = threading.Event(), {m: [0, []] for m in senders}

    def send(model: str) -> None:
        with Client(endpoint, timeout_s=20) as client:
            while not stop.is_set():
                try:
                    client.infer(model, INPUTS[model])
                    results[model][0] += 1
                except Exception as e:       # noqa: BLE001 - every failure is recorded
                    results[model][1].append(e)
    threads = [threading.Thread(target=send, args=(m,)) for m in senders for _ in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        received(listener, 0.0)
        # convnet unchanged; depthwise removed; attention changed (instances, SLO: loaded
        # again beside the old version); camera added (convnet's file under another name)
        changed = entries("convnet", "attention", attention=300.0)
        changed[1]["instances"] = 2
        camera = {**entries("convnet")[0], "name": "camera", "slo_ms": 40.0}
        write_config(config, endpoint, changed + [camera])
        applied = Reloader(server).reload()
        assert applied is not None and [m.name for m in applied.added] == ["camera"]
        assert applied.removed == ("depthwise",) and applied.unchanged == ("convnet",)
        assert [m.name for m in applied.reloaded] == ["attention"]
        assert list(server.models) == ["convnet", "attention", "camera"]
        assert server.models["attention"].instances == 2
        assert server.models["attention"].slo_ms == 300.0
        with Client(endpoint, timeout_s=20) as client:
            assert client.infer("camera", INPUTS["convnet"])["logits"].shape[0] == 1
            with pytest.raises(UnknownModel):
                client.infer("depthwise", INPUTS["depthwise"])
        time.sleep(0.3)
        # a change of the SLO alone: switched in place, nothing loaded
        changed[1]["slo_ms"] = 200.0
        write_config(config, endpoint, changed + [camera])
        applied = Reloader(server).reload()
        assert [m.name for m in applied.retuned] == ["attention"] and not applied.reloaded
        assert server.models["attention"].slo_ms == 200.0
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        for model in ("convnet", "attention"):       # unchanged and changed: never failed
            assert results[model][1] == [] and results[model][0] > 0, (model, results[model])
        # depthwise's senders: answered until the switch, then UnknownModel, nothing else
        assert results["depthwise"][0] > 0
        assert all(isinstance(e, UnknownModel) for e in results["depthwise"][1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                "depthwise" in server.engine.models or "attention" in server.backend._slices):
            time.sleep(0.01)
        assert "depthwise" not in server.engine.models       # drained and unloaded
        held = set(server.backend._slices)                   # the old attention too
        assert "depthwise" not in held and "attention" not in held and len(held) == 3, held
        stats = server.stats.snapshot()["models"]
        assert set(stats) == {"convnet", "attention", "camera"}
        assert stats["attention"]["slo_ms"] == 200 and stats["camera"]["completed"] == 1
        assert stats["convnet"]["failed"] == 0 and stats["attention"]["failed"] == 0
        messages = received(listener, 0.2)
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in messages), messages
        assert "READY=1" in messages
        assert any(m.startswith("STATUS=reloaded: serving convnet, attention, camera")
                   for m in messages), messages
    finally:
        server.stop()
        notifier.close()
        listener.close()


def test_an_invalid_config_is_refused_and_the_old_keeps_serving(short_dir, caplog):
    endpoint = f"ipc://{short_dir}/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"))
    with Server(load_config(config)) as server, Client(endpoint, timeout_s=20) as client:
        reloader = Reloader(server)
        write_config(config, endpoint, entries("convnet", convnet=-3))
        assert reloader.reload() is None
        (short_dir / "broken.onnx").write_bytes(b"not a model")    # validates, fails to load
        write_config(config, endpoint, entries("convnet") + [
            {"name": "ghost", "path": str(short_dir / "broken.onnx"), "slo_ms": 10}])
        assert reloader.reload() is None
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 2 and "slo_ms" in refusals[0], refusals
        assert "broken.onnx" in refusals[1], refusals
        assert list(server.models) == ["convnet"]
        client.infer("convnet", INPUTS["convnet"])
        # a section that cannot change live: one line, left as it was; models still apply
        write_config(config, endpoint, entries("convnet", "attention"), streams=3)
        applied = reloader.reload()
        assert applied.restart == ("device",)
        assert any("needs a restart" in r.getMessage() and "device" in r.getMessage()
                   for r in caplog.records)
        assert server.backend.num_streams == 2 and list(server.models) == ["convnet",
                                                                           "attention"]
        client.infer("attention", INPUTS["attention"])


def test_sighup_reloads_a_running_serve(short_dir):
    endpoint = f"ipc://{short_dir}/s.sock"      # ServerProcess serves on a socket of its own
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"))
    server = ServerProcess(config)
    try:
        write_config(config, endpoint, entries("convnet", "attention"))
        os.kill(server.proc.pid, signal.SIGHUP)
        with Client(server.endpoint, timeout_s=20) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if "attention" in [m["name"] for m in client.models()]:
                    break
                time.sleep(0.05)
            assert client.infer("attention", INPUTS["attention"])["features"].shape == \
                (1, 32, 64)
            client.infer("convnet", INPUTS["convnet"])
        assert server.proc.poll() is None              # SIGHUP no longer kills it
        assert server.stop() == 0
    finally:
        server.close()
