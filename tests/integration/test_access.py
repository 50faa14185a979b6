"""Who can reach the server: socket and directory modes, the socket group, directories other
users control, tcp beyond loopback only with CURVE keys, clients without the key refused,
models only from the config, and no pickle anywhere in the package."""
from __future__ import annotations

import ast
import grp
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgesched import (
    Client,
    ConfigError,
    EdgeschedError,
    ServerUnavailable,
    UnknownModel,
    endpoints,
)
from edgesched.config import parse_config
from edgesched.serve import access
from edgesched.serve.server import Server
from tests.integration.conftest import CLIENT_TIMEOUT_S, make_config
from tests.models import EXAMPLES, example_input

pytest.importorskip("onnxruntime")
PACKAGE = Path(__file__).resolve().parents[2] / "edgesched"
ATTENTION = [{"name": "attention", "path": str(EXAMPLES / "attention.onnx"), "slo_ms": 250}]
TOKENS = example_input("attention", 0)


def other_group() -> int | None:
    """A group, not our primary one, that this process may give files to (root: any)."""
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    return next((gid for gid in candidates if gid != os.getegid()), None)


def config(endpoint: str, **server):
    cfg = make_config(endpoint, ATTENTION)
    return replace(cfg, server=replace(cfg.server, **server))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_socket_and_its_new_directory_admit_only_owner_and_group(short_dir):
    gid = other_group()
    if gid is None:
        pytest.skip("this user belongs to no second group")
    endpoint = f"ipc://{short_dir}/new/s.sock"
    with Server(config(endpoint, socket_group=gid)) as server:
        sock, directory = Path(endpoint[6:]), short_dir / "new"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
        assert sock.stat().st_gid == gid and directory.stat().st_gid == gid
        with Client(server.endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
            assert client.infer("attention", TOKENS)["features"].shape == (1, 32, 64)


def test_an_unknown_socket_group_is_a_config_error():
    with pytest.raises(ConfigError, match="server.socket_group.*exists"):
        parse_config({"server": {"socket_group": "no-such-group-edgesched"},
                      "models": ATTENTION}, "<test>", Path("/"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_a_socket_directory_another_user_owns_is_refused(short_dir):
    planted = short_dir / "planted"
    planted.mkdir()
    os.chown(planted, 65534, 65534)                  # nobody: as another user would leave it
    with pytest.raises(EdgeschedError, match="belongs to uid 65534"):
        Server(config(f"ipc://{planted}/s.sock")).start()
    assert list(planted.iterdir()) == []


def test_a_world_writable_socket_directory_is_refused(short_dir):
    open_dir = short_dir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(EdgeschedError, match="writable by every user"):
        Server(config(f"ipc://{open_dir}/s.sock")).start()


def test_a_file_that_is_not_a_socket_is_never_replaced(short_dir):
    victim = short_dir / "s.sock"
    victim.write_text("precious")
    with pytest.raises(EdgeschedError, match="not a socket"):
        Server(config(f"ipc://{victim}")).start()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:7000", "tcp://*:7000",
                                      "tcp://192.168.1.10:7000", "tcp://eth0:7000",
                                      "tcp://jetson.local:7000"])
def test_a_bind_beyond_loopback_without_keys_is_refused(endpoint):
    with pytest.raises(ConfigError, match="server.endpoint.*CURVE|curve_secret_key"):
        make_config(endpoint, ATTENTION)
    # The same through `serve --endpoint` over a loopback config.
    with pytest.raises(ConfigError, match="--endpoint"):
        Server(make_config("tcp://127.0.0.1:7000", ATTENTION), endpoint=endpoint)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_loopback_needs_no_keys(host):
    assert endpoints.is_loopback(f"tcp://{host}:7000")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    server_public, server_secret = access.create_keys(root / "server", "server")
    allowed_public, allowed_secret = access.create_keys(root / "clients", "camera")
    _, stranger_secret = access.create_keys(root / "strangers", "stranger")
    assert stat.S_IMODE(server_secret.stat().st_mode) == 0o600
    return {"server_public": server_public, "server_secret": server_secret,
            "clients": root / "clients", "allowed": allowed_secret, "stranger": stranger_secret}


def test_curve_admits_authorized_clients_and_refuses_the_rest(keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config(endpoint, curve_secret_key=keys["server_secret"],
                 curve_authorized_keys=keys["clients"])
    with Server(cfg) as server:
        with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S, server_key=keys["server_public"],
                    client_key=keys["allowed"]) as client:
            np.testing.assert_array_equal(client.infer("attention", TOKENS)["features"].shape,
                                          (1, 32, 64))
        with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S, server_key=keys["server_public"],
                    client_key=keys["stranger"]) as stranger:
            with pytest.raises(ServerUnavailable, match="refused"):
                stranger.infer("attention", TOKENS)
        with Client(endpoint, timeout_s=2.0) as plain:     # no keys: no handshake at all
            with pytest.raises(ServerUnavailable):
                plain.infer("attention", TOKENS)
        assert server.stats.snapshot()["models"]["attention"]["completed"] == 1


def test_a_bind_beyond_loopback_is_accepted_with_keys(keys):
    cfg = parse_config({"server": {"endpoint": "tcp://0.0.0.0:7000",
                                   "curve_secret_key": str(keys["server_secret"]),
                                   "curve_authorized_keys": str(keys["clients"])},
                        "models": ATTENTION}, "<test>", Path("/"))
    assert cfg.server.curve_secret_key == keys["server_secret"]


def test_half_a_curve_configuration_is_a_config_error(keys):
    with pytest.raises(ConfigError, match="server.curve_authorized_keys"):
        parse_config({"server": {"curve_secret_key": str(keys["server_secret"])},
                      "models": ATTENTION}, "<test>", Path("/"))
    with pytest.raises(ConfigError, match="curve_secret_key.*no secret key"):
        parse_config({"server": {"curve_secret_key": str(keys["server_public"]),
                                 "curve_authorized_keys": str(keys["clients"])},
                      "models": ATTENTION}, "<test>", Path("/"))


def test_a_request_cannot_name_a_model_file(example_server, client):
    for name in ("../../etc/passwd", str(EXAMPLES / "convnet.onnx"), "convnet.onnx"):
        with pytest.raises(UnknownModel):
            client.infer(name, TOKENS)


def test_no_module_in_the_package_can_unpickle():
    """pickle, marshal and friends run code from bytes: none may be imported or enabled."""
    banned = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & banned, f"{path}:{node.lineno} imports {names & banned}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, \
                    f"{path}: allow_pickle enabled"
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "yaml":
                loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                assert loader is not None, f"{path}:{node.lineno} yaml.load without a Loader"
