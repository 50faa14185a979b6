"""Model control over the socket (LOAD/UNLOAD, serve/queries.py, serve/reload.py): admins get
changes through, everyone else a typed refusal with the set unchanged; a bad model file is one
typed line and the old set serves on; an unload answers every request in flight; socket
changes survive a reload of the file until the file's entry for that name is edited; numbered
versions are served and a new one is picked up on reload."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgesched import Client, UnknownModel
from edgesched.config import load_config
from edgesched.errors import ModelChangeRefused, NotPermitted
from edgesched.serve import wire
from edgesched.serve.admin import load_model, unload_model
from edgesched.serve.server import Server
from tests.integration.test_reload import entries, write_config
from tests.models import EXAMPLES, SLOW_INPUT, slow_input

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]
INPUTS = {"convnet": {"image": np.zeros((1, 3, 96, 96), np.float32)},
          "depthwise": {"image": np.zeros((1, 3, 128, 128), np.float32)}}
NOBODY = 65534          # a uid and gid that exist on Linux (nobody / nogroup)
IS_ROOT = os.getuid() == 0


@pytest.fixture
def short_dir():
    path = Path(tempfile.mkdtemp(prefix="es"))
    os.chmod(path, 0o711)               # another user may reach the socket directory in it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def served(client: Client) -> dict[str, dict]:
    return {m["name"]: m for m in client.models()}


# Started as this user (the interpreter may live where only it can read), imports first, then
# becomes uid/gid argv[3] with no supplementary groups: the kernel's SO_PEERCRED says so.
_AS_ANOTHER_USER = """
import json, os, sys
from edgesched import Client
from edgesched.serve.admin import load_model, unload_model
os.setgroups([])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[3]))
out = {}
with Client(sys.argv[1], timeout_s=20) as c:
    out["models"] = sorted(m["name"] for m in c.models())
    calls = {"load": lambda: load_model(c, {"name": "intruder", "path": sys.argv[2],
                                            "slo_ms": 5}),
             "unload": lambda: unload_model(c, "convnet")}
    for what, call in calls.items():
        try:
            out[what] = call()
        except Exception as e:
            out[what] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def as_user(uid: int, endpoint: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _AS_ANOTHER_USER, endpoint,
                           str(EXAMPLES / "convnet.onnx"), str(uid)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a client as another user")
def test_admins_load_and_unload_and_another_user_gets_the_typed_refusal(short_dir):
    endpoint = f"ipc://{short_dir}/run/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet", "depthwise"),
                          socket_group=NOBODY)
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=20) as client:
        # another user, in the socket's group, not an admin: read-only
        seen = as_user(NOBODY, endpoint)
        assert seen["models"] == ["convnet", "depthwise"]
        for what in ("load", "unload"):
            kind, message = seen[what]
            assert kind == "NotPermitted" and "for admins only" in message, seen
            assert f"uid {NOBODY} is not root" in message and "\n" not in message
        assert list(server.models) == ["convnet", "depthwise"]
        assert "intruder" not in server.backend._slices
        client.infer("convnet", INPUTS["convnet"])
        # the server's own user (this process) is an admin
        reply = load_model(client, {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"),
                                    "slo_ms": 40, "priority": "realtime"})
        assert reply == {"model": "camera", "version": None, "change": "+camera"}
        models = served(client)
        assert models["camera"]["origin"] == "socket" and models["convnet"]["origin"] == "config"
        assert client.infer("camera", INPUTS["convnet"])["logits"].shape[0] == 1
        assert unload_model(client, "depthwise") == {"model": "depthwise", "drained": True}
        assert list(server.models) == ["convnet", "camera"]
        assert "depthwise" not in server.backend._slices
        with pytest.raises(UnknownModel):
            client.infer("depthwise", INPUTS["depthwise"])


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a client as another user")
def test_admin_group_members_may_load(short_dir):
    endpoint = f"ipc://{short_dir}/run/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet", "depthwise"),
                          socket_group=NOBODY, admin_group=NOBODY)
    with Server(load_config(config)) as server:
        seen = as_user(NOBODY, endpoint)
        assert seen["load"] == {"model": "intruder", "version": None, "change": "+intruder"}
        assert seen["unload"] == {"model": "convnet", "drained": True}
        assert list(server.models) == ["depthwise", "intruder"]


def test_a_tcp_client_without_curve_is_not_an_admin(short_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"))
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=20) as client:
        with pytest.raises(NotPermitted, match="carries no identity"):
            load_model(client, {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"),
                                "slo_ms": 40})
        with pytest.raises(NotPermitted):
            unload_model(client, "convnet")
        assert list(served(client)) == ["convnet"] and list(server.models) == ["convnet"]


def test_curve_clients_in_admin_keys_may_load_other_authorized_clients_may_not(short_dir):
    from edgesched.serve.access import create_keys
    create_keys(short_dir / "server", "server")
    ops_public, ops_secret = create_keys(short_dir / "clients", "ops")
    _, camera_secret = create_keys(short_dir / "clients", "camera")
    (short_dir / "admins").mkdir()
    shutil.copy(ops_public, short_dir / "admins")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"),
                          curve_secret_key=str(short_dir / "server" / "server.key_secret"),
                          curve_authorized_keys=str(short_dir / "clients"),
                          admin_keys=str(short_dir / "admins"))
    camera = {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 40}
    server_key = short_dir / "server" / "server.key"
    with Server(load_config(config)) as server:
        with Client(endpoint, timeout_s=20, server_key=server_key,
                    client_key=camera_secret) as client:
            with pytest.raises(NotPermitted, match="is not in server.admin_keys"):
                load_model(client, camera)
            assert list(served(client)) == ["convnet"]
        with Client(endpoint, timeout_s=20, server_key=server_key,
                    client_key=ops_secret) as client:
            assert load_model(client, camera)["change"] == "+camera"
            client.infer("camera", INPUTS["convnet"])
        assert list(server.models) == ["convnet", "camera"]


def test_a_bad_load_is_one_typed_line_and_the_old_set_serves_on(short_dir):
    endpoint = f"ipc://{short_dir}/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"))
    (short_dir / "broken.onnx").write_bytes(b"not a model")     # validates, fails to load
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=20) as client:
        bad = [({"name": "ghost", "path": str(short_dir / "broken.onnx"), "slo_ms": 10},
                "broken.onnx"),
               ({"name": "ghost", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": -1},
                "LOAD: model.slo_ms: expected a finite number > 0"),
               ({"name": "ghost", "path": str(short_dir / "missing.onnx"), "slo_ms": 10},
                "which does not exist"),
               ({"name": "ghost", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 10,
                 "colour": "red"}, "unknown key 'colour'")]
        for entry, words in bad:
            with pytest.raises(ModelChangeRefused) as e:
                load_model(client, entry)
            assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
            assert "still serving convnet" in str(e.value)
        # a relative path cannot mean anything on the server's side (the CLI makes it absolute)
        frames = wire.encode_load(99, {"name": "ghost", "path": "m.onnx", "slo_ms": 10})
        with pytest.raises(ModelChangeRefused, match="must be absolute"):
            from edgesched.serve.admin import _call
            _call(client, 99, frames, 20)
        with pytest.raises(ModelChangeRefused, match="last model served"):
            unload_model(client, "convnet")
        with pytest.raises(UnknownModel):
            unload_model(client, "ghost")
        assert list(server.models) == ["convnet"] and set(server.backend._slices) == {"convnet"}
        assert client.infer("convnet", INPUTS["convnet"])["logits"].shape[0] == 1


def test_an_unload_answers_every_request_in_flight(short_dir, model_files):
    endpoint = f"ipc://{short_dir}/s.sock"
    slow = {"name": "slow", "path": str(model_files.slow), "slo_ms": 1000}
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet") + [slow])
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=60) as client:
        # One connection: the server reads its messages in order, so every request below is
        # admitted before the UNLOAD, and most are still queued or running when it comes.
        pending = [client.submit("slow", slow_input(i)) for i in range(24)]
        assert unload_model(client, "slow") == {"model": "slow", "drained": True}
        # the UNLOAD reply came after every one of theirs: it waited for the drain
        assert all(p.id in client._conn().stash for p in pending)
        outputs = [p.result() for p in pending]
        assert len(outputs) == 24 and all(o["y"].shape == SLOW_INPUT[1] for o in outputs)
        assert list(server.models) == ["convnet"] and "slow" not in server.backend._slices
        stats = server.stats.snapshot()["models"]
        assert "slow" not in stats
        with pytest.raises(UnknownModel):
            client.infer("slow", slow_input(0))


def test_socket_changes_survive_a_reload_until_the_file_edits_that_name(short_dir):
    endpoint = f"ipc://{short_dir}/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet", "depthwise"))
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=20) as client:
        load_model(client, {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"),
                            "slo_ms": 40})
        unload_model(client, "depthwise")
        assert server.reloader.reload() is not None           # the file unchanged
        models = served(client)
        assert list(models) == ["convnet", "camera"] and models["camera"]["origin"] == "socket"
        # the file now names camera: the file's word is the newer one for camera; depthwise's
        # entry is as it was, so the socket's unload still holds
        write_config(config, endpoint, entries("convnet", "depthwise") + [
            {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 77}])
        assert server.reloader.reload() is not None
        models = served(client)
        assert list(models) == ["convnet", "camera"]
        assert models["camera"]["origin"] == "config" and models["camera"]["slo_ms"] == 77
        # depthwise's entry edited: served again, from the file
        write_config(config, endpoint, entries("convnet", "depthwise", depthwise=90.0) + [
            {"name": "camera", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 77}])
        assert server.reloader.reload() is not None
        models = served(client)
        assert set(models) == {"convnet", "depthwise", "camera"}
        assert models["depthwise"]["origin"] == "config" and models["depthwise"]["slo_ms"] == 90
        client.infer("depthwise", INPUTS["depthwise"])


def test_numbered_versions_are_served_and_a_new_one_is_picked_up(short_dir):
    endpoint = f"ipc://{short_dir}/s.sock"
    det = short_dir / "det"
    (det / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "convnet.onnx", det / "1" / "model.onnx")
    config = write_config(short_dir / "c.yaml", endpoint,
                          [{"name": "det", "path": str(det), "slo_ms": 100}])
    with Server(load_config(config)) as server, \
            Client(endpoint, timeout_s=20) as client:
        assert served(client)["det"]["version"] == 1
        client.infer("det", INPUTS["convnet"])
        (det / "2").mkdir()
        (det / "2" / "model.onnx").write_bytes(b"still being copied")
        assert server.reloader.reload() is None              # refused: version 1 serves on
        assert served(client)["det"]["version"] == 1
        shutil.copy(EXAMPLES / "depthwise.onnx", det / "2" / "model.onnx")
        applied = server.reloader.reload()
        assert [m.name for m in applied.reloaded] == ["det"]
        assert served(client)["det"]["version"] == 2
        assert served(client)["det"]["path"] == str(det / "2" / "model.onnx")
        client.infer("det", INPUTS["depthwise"])
        # a socket load pins a version of the same layout
        reply = load_model(client, {"name": "old", "path": str(det), "slo_ms": 100,
                                    "version": 1})
        assert reply["version"] == 1 and served(client)["old"]["version"] == 1
        client.infer("old", INPUTS["convnet"])


def test_the_models_command(short_dir, capsys, monkeypatch):
    from edgesched.commands.cli import main
    endpoint = f"ipc://{short_dir}/s.sock"
    config = write_config(short_dir / "c.yaml", endpoint, entries("convnet"))
    monkeypatch.chdir(EXAMPLES)                # a relative PATH is this directory's
    with Server(load_config(config)) as server:
        assert main(["models", "load", "camera", "convnet.onnx", "--slo-ms", "40",
                     "--priority", "realtime", "--shape", "image:1x3x96x96",
                     "--endpoint", endpoint]) == 0
        assert capsys.readouterr().out == "loaded camera: +camera\n"
        assert server.models["camera"].priority.value == "realtime"
        assert server.config.models[-1].path == EXAMPLES / "convnet.onnx"
        assert main(["models", "list", "--endpoint", endpoint]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert listing[0].split()[:3] == ["model", "version", "origin"]
        assert [line.split()[:3] for line in listing[2:]] == [
            ["convnet", "-", "config"], ["camera", "-", "socket"]], listing
        assert main(["models", "load", "bad", "missing.onnx", "--slo-ms", "40",
                     "--endpoint", endpoint]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edgesched: error: load refused") and err.count("\n") == 1, err
        assert main(["models", "unload", "camera", "--endpoint", endpoint]) == 0
        assert capsys.readouterr().out == "unloaded camera\n"
        assert list(server.models) == ["convnet"]
