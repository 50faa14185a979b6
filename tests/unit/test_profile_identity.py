"""Device identity in a profile (L4T, board model string, TensorRT version) and the mismatch
rules per field: another module, power mode, jetson_clocks or TensorRT major.minor -> ignored;
another TensorRT patch release -> accepted with a one-line note."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgesched import profiles
from edgesched.config import parse_config
from edgesched.profiles import current_conditions, mismatch
from edgesched.sched.profile import Profile
from edgesched.telemetry.devicetree import read_l4t
from edgesched.types import SliceDemand

REPO = Path(__file__).resolve().parents[2]
L4T = REPO / "tests" / "fixtures" / "l4t"
TREES = REPO / "tests" / "fixtures" / "devicetree"


def profile(device="tensorrt:orin-agx", **meta) -> Profile:
    return Profile(device, {"m": (SliceDemand(0.5, 0.2, 1000.0, 0.5),)}, meta=meta)


def now(device="tensorrt:orin-agx", **conditions) -> dict:
    return {"device": device, **conditions}


def test_l4t_release_is_read_through_a_root():
    assert read_l4t(L4T / "r36.3") == "36.3.0"
    assert read_l4t(L4T / "r35.4.1") == "35.4.1"


def test_no_or_unreadable_release_file_is_none(tmp_path):
    assert read_l4t(tmp_path) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("something else\n")
    assert read_l4t(tmp_path) is None


def test_conditions_record_the_board_l4t_and_tensorrt(monkeypatch, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_bytes(
        (L4T / "r36.3" / "etc" / "nv_tegra_release").read_bytes())
    model = root / "proc" / "device-tree"
    model.mkdir(parents=True)
    (model / "model").write_bytes(
        (TREES / "orin-nx-jp6" / "sys/firmware/devicetree/base/model").read_bytes())
    monkeypatch.setattr(profiles, "_tensorrt_version", lambda: "10.3.0")
    (tmp_path / "m.engine").write_bytes(b"")
    config = parse_config({"device": {"backend": "tensorrt"}, "telemetry": "none",
                           "models": [{"name": "m", "path": "m.engine", "slo_ms": 10}]}, "c.yaml", tmp_path)
    got = current_conditions(config, root)
    assert got["device"] == "tensorrt:orin-nx" and got["module"] == "orin-nx"
    assert got["model"] == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert got["l4t"] == "36.3.0" and got["tensorrt"] == "10.3.0"


def test_another_module_is_ignored():
    why = mismatch(profile("tensorrt:orin-nx"), now("tensorrt:orin-agx"))
    assert why and "module orin-nx" in why and "orin-agx" in why


@pytest.mark.parametrize("key,then,current", [("nvpmodel", "MAXN", "15W"),
                                              ("jetson_clocks", True, False)])
def test_another_power_mode_or_clock_state_is_ignored(key, then, current):
    assert key in mismatch(profile(**{key: then}), now(**{key: current}))


def test_another_tensorrt_release_is_ignored():
    why = mismatch(profile(tensorrt="8.6.2"), now(tensorrt="10.3.0"))
    assert why and "TensorRT 8.6.2" in why and "10.3.0" in why
    assert mismatch(profile(tensorrt="10.3.0"), now(tensorrt="10.7.0"))


def test_another_tensorrt_patch_release_is_accepted_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="edgesched.profiles"):
        assert mismatch(profile(tensorrt="10.3.0.26"), now(tensorrt="10.3.1")) is None
    notes = [r.getMessage() for r in caplog.records if "patch release" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]


def test_unknown_fields_on_either_side_do_not_reject():
    assert mismatch(profile(), now(tensorrt="10.3.0", nvpmodel="MAXN")) is None
    assert mismatch(profile(tensorrt="10.3.0", l4t="36.3.0"), now(l4t="36.4.0")) is None


def test_the_same_conditions_are_valid():
    meta = dict(nvpmodel="MAXN", jetson_clocks=True, tensorrt="10.3.0")
    assert mismatch(profile(**meta), now(**meta)) is None
