"""Who may load and unload models (serve/access.py Admins), and the LOAD/UNLOAD wire messages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgesched import errors
from edgesched.config import ServerConfig, parse_config
from edgesched.errors import ConfigError, InvalidInput, NotPermitted
from edgesched.serve import access, wire
from tests.models import EXAMPLES


def admins(**server) -> access.Admins:
    return access.Admins(ServerConfig(endpoint="ipc:///tmp/x.sock", **server),
                         "ipc:///tmp/x.sock")


def test_peer_credentials_come_from_libzmq_peer_address():
    # what libzmq 4.3 gives for an ipc peer on Linux (SO_PEERCRED): HOST:UID:GID:PID
    assert access.peer_credentials("localhost:65534:65534:25909") == (65534, 65534)
    assert access.peer_credentials("127.0.0.1") is None        # a tcp peer
    assert access.peer_credentials("::1") is None
    assert access.peer_credentials(None) is None


def test_root_and_the_servers_own_uid_are_admins_others_are_not():
    a = admins()
    assert a.refusal(None, "localhost:0:0:1") is None
    assert a.refusal(None, f"localhost:{os.getuid()}:{os.getgid()}:1") is None
    stranger = 54321 if os.getuid() != 54321 else 54322
    why = a.refusal(None, f"localhost:{stranger}:{stranger}:1")
    assert why is not None and f"uid {stranger} is not root" in why
    assert "no identity" in a.refusal(None, None)                 # tcp without CURVE


def test_admin_group_admits_its_members_by_gid_and_by_group_list():
    a = admins(admin_group=65534)
    assert a.refusal(None, "localhost:54321:65534:1") is None       # primary gid
    why = a.refusal(None, "localhost:54321:54321:1")
    assert why is not None and "nor in group 65534 (server.admin_group)" in why
    # a uid whose supplementary groups (getgrouplist) hold the group: root's own groups here
    assert os.getgid() in access._groups(os.getuid(), os.getgid())


def test_admin_keys_admit_exactly_their_curve_keys(tmp_path):
    access.create_keys(tmp_path / "admins", "ops")
    access.create_keys(tmp_path / "clients", "cam")
    import zmq.auth
    ops = zmq.auth.load_certificate(str(tmp_path / "admins" / "ops.key"))[0].decode()
    cam = zmq.auth.load_certificate(str(tmp_path / "clients" / "cam.key"))[0].decode()
    a = admins(admin_keys=tmp_path / "admins")
    assert a.keys == {ops}
    assert a.refusal(ops, None) is None
    assert "is not in server.admin_keys" in a.refusal(cam, None)
    with pytest.raises(ConfigError, match="a directory of CURVE public certificates"):
        admins(admin_keys=tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="at least one"):
        admins(admin_keys=tmp_path / "empty")


def test_check_raises_the_typed_refusal():
    class Frame:                                   # a received zmq.Frame's properties
        def __init__(self, peer):
            self.peer = peer

        def get(self, name):
            if name == "Peer-Address":
                return self.peer
            raise __import__("zmq").ZMQError(22)    # EINVAL: no User-Id without CURVE
    a = admins()
    a.check(Frame("localhost:0:0:1"), "LOAD")
    with pytest.raises(NotPermitted, match="LOAD is for admins only") as e:
        a.check(Frame("localhost:54321:54321:1"), "LOAD")
    assert e.value.code == "NOT_PERMITTED" and "\n" not in str(e.value)
    assert isinstance(errors.error_from_code("NOT_PERMITTED", "x"), NotPermitted)
    assert isinstance(errors.error_from_code("MODEL_CHANGE_REFUSED", "x"),
                      errors.ModelChangeRefused)


def test_admin_config_keys_are_checked(tmp_path):
    data = {"models": [{"name": "c", "path": str(EXAMPLES / "convnet.onnx"), "slo_ms": 5}]}
    cfg = parse_config({**data, "server": {"admin_group": 0}}, "<t>", Path("."))
    assert cfg.server.admin_group == 0 and cfg.server.admin_keys is None
    with pytest.raises(ConfigError) as e:
        parse_config({**data, "server": {"admin_group": "no-such-group-x"}}, "<t>", Path("."))
    assert e.value.key == "server.admin_group"
    with pytest.raises(ConfigError) as e:
        parse_config({**data, "server": {"admin_keys": str(tmp_path)}}, "<t>", Path("."))
    assert e.value.key == "server.admin_keys" and "curve_secret_key" in str(e.value)


def test_load_and_unload_round_trip_on_the_wire():
    entry = {"name": "cam", "path": "/m/cam.onnx", "slo_ms": 40, "shapes": {"x": [1, 3]}}
    msg = wire.decode_request(wire.encode_load(7, entry))
    assert msg.kind == wire.LOAD and msg.id == 7 and wire.decode_load(msg.header) == entry
    msg = wire.decode_request(wire.encode_unload(8, "cam"))
    assert msg.kind == wire.UNLOAD and wire.decode_unload(msg.header) == "cam"
    with pytest.raises(InvalidInput, match="'model' map"):
        wire.decode_load({"id": 1, "model": "cam"})
    with pytest.raises(InvalidInput, match="string 'model'"):
        wire.decode_unload({"id": 1, "model": {"name": "cam"}})
