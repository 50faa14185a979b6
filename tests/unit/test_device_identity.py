"""Device identity: the board's device-tree model string -> Jetson module, `device.module`,
and the module's part in cost-model estimates and profile matching.

Every reader here is pointed at a fixture tree (tests/fixtures/devicetree/) or tmp_path."""
from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest

from edgesched import profiles
from edgesched.backends.sim_device import SPECS, slice_work
from edgesched.config import DeviceConfig, parse_config
from edgesched.devices import MODULES, module_for_model
from edgesched.errors import ConfigError
from edgesched.profiles import (
    choose_profile,
    current_conditions,
    device_name,
    estimate_profile,
    mismatch,
    which_module,
)
from edgesched.sched.profile import Profile
from edgesched.telemetry.devicetree import Board, read_board, read_model
from edgesched.types import BackendName, SliceDemand

REPO = Path(__file__).resolve().parents[2]
TREES = REPO / "tests" / "fixtures" / "devicetree"
DETECTOR = REPO / "engines" / "workloads" / "detector.onnx"

# Each fixture tree: the string it holds and the module it names (sources: its README).
BOARDS = {
    "orin-agx-jp5": ("Jetson AGX Orin Developer Kit", "orin-agx"),
    "orin-agx-jp6": ("NVIDIA Jetson AGX Orin Developer Kit", "orin-agx"),
    "orin-agx-32gb-module-jp5": ("Jetson AGX Orin", "orin-agx"),
    "orin-agx-industrial-jp5": ("Jetson AGX Orin Industrial", "orin-agx"),
    "orin-nx-jp5": ("NVIDIA Orin NX Developer Kit", "orin-nx"),
    "orin-nx-jp6": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "orin-nx"),
    "orin-nx-8gb-jp6-super": (
        "NVIDIA Jetson Orin NX Engineering Reference Developer Kit Super", "orin-nx"),
    "orin-nano-8gb-jp5": ("NVIDIA Orin Nano Developer Kit", "orin-nano"),
    "orin-nano-mainline": ("NVIDIA Jetson Orin Nano Developer Kit", "orin-nano"),
    "orin-nano-4gb-jp6-super": (
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "orin-nano"),
    "xavier-agx-jp4": ("Jetson-AGX", "xavier-agx"),
    "xavier-agx-l4t32.1": ("jetson-xavier", "xavier-agx"),
    "xavier-agx-mainline": ("NVIDIA Jetson AGX Xavier Developer Kit", "xavier-agx"),
    "xavier-nx-jp5": ("NVIDIA Jetson Xavier NX Developer Kit", None),
    "nano-jp4": ("NVIDIA Jetson Nano Developer Kit", None),
    "agx-thor-jp7": ("NVIDIA Jetson AGX Thor Developer Kit", None),
}


# --- the device tree -> a module ------------------------------------------------------------

def test_every_fixture_tree_is_listed():
    assert {p.name for p in TREES.iterdir() if p.is_dir()} == set(BOARDS)
    assert {m for _, m in BOARDS.values()} == {*MODULES, None}


@pytest.mark.parametrize("tree", sorted(BOARDS))
def test_each_board_names_its_module(tree):
    model, module = BOARDS[tree]
    assert read_board(TREES / tree) == Board(model, module)


def test_the_string_is_read_through_proc_and_sys_alike(tmp_path):
    (tmp_path / "sys/firmware/devicetree/base").mkdir(parents=True)
    (tmp_path / "sys/firmware/devicetree/base/model").write_bytes(b"Jetson AGX Orin\0")
    assert read_board(tmp_path) == Board("Jetson AGX Orin", "orin-agx")    # no /proc mounted
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Orin NX Developer Kit\0")
    assert read_model(tmp_path) == "NVIDIA Orin NX Developer Kit"           # /proc first


def test_no_device_tree_is_no_board(tmp_path):
    assert read_board(tmp_path) == Board(None, None)          # an x86 PC


@pytest.mark.parametrize("content", [b"", b"\0", b"  \n\0"])
def test_an_empty_model_string_is_no_board(tmp_path, content):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(content)
    assert read_board(tmp_path) == Board(None, None)


def test_an_unreadable_model_file_is_skipped(tmp_path):
    (tmp_path / "proc/device-tree/model").mkdir(parents=True)       # a directory, not a file
    assert read_model(tmp_path) is None


@pytest.mark.parametrize("model, module", [
    ("NVIDIA JETSON AGX ORIN DEVELOPER KIT", "orin-agx"),
    ("jetson_agx_orin", "orin-agx"),
    ("NVIDIA Jetson Orin  NX  16GB", "orin-nx"),
    ("Jetson AGX Xavier Industrial", "xavier-agx"),
    ("Jetson-AGX-Thor", None),                  # the whole string must be "Jetson AGX"
    ("NVIDIA IGX Orin Developer Kit", None),
    ("Raspberry Pi 4 Model B Rev 1.4", None),
    ("", None),
])
def test_model_strings_are_matched_by_words_not_spelling(model, module):
    assert module_for_model(model) == module


# --- device.module --------------------------------------------------------------------------

def config(tmp_path, **device):
    return parse_config({"device": device, "telemetry": "none",
                         "scheduler": {"policy": "interference"},
                         "models": [{"name": "detector", "path": str(DETECTOR), "slo_ms": 33}]},
                        "test.yaml", tmp_path)


def test_module_defaults_to_auto_and_takes_each_module(tmp_path):
    assert DeviceConfig().module == "auto" == config(tmp_path).device.module
    for module in ("auto", *MODULES):
        assert config(tmp_path, module=module).device.module == module


@pytest.mark.parametrize("value", ["agx-orin", "Orin-AGX", "orin", "", 5, None, True])
def test_a_bad_module_is_one_line_naming_the_file_and_key(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, module=value)
    text = str(err.value)
    assert text.startswith("test.yaml: device.module: ") and "\n" not in text
    assert "auto, orin-agx, orin-nx, orin-nano, xavier-agx" in text


def test_a_module_key_typo_is_pointed_at(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'module'"):
        config(tmp_path, modul="orin-agx")


# --- which figures estimates use --------------------------------------------------------------

def detector_ms(module: str) -> float:
    return slice_work(onnx.load(str(DETECTOR)), SPECS[module]).duration_us / 1e3


def estimated_ms(profile: Profile) -> float:
    (demand,) = profile.demands["detector"]
    return demand.duration_us / 1e3


def test_an_agx_orin_on_tensorrt_is_estimated_on_agx_orin_figures(tmp_path, monkeypatch):
    # backend auto on a Jetson with TensorRT: resolution says tensorrt (no TensorRT here).
    monkeypatch.setattr(profiles, "resolve_backend_name", lambda name: BackendName.TENSORRT)
    cfg = config(tmp_path, backend="auto")              # sim_device stays its orin-nano default
    estimate = estimate_profile(cfg, TREES / "orin-agx-jp6")
    assert estimate.device == "estimate:orin-agx"
    assert estimate.meta["module"] == estimate.meta["figures"] == "orin-agx"
    assert "NVIDIA Jetson AGX Orin Developer Kit" in estimate.meta["figures_from"]
    assert estimated_ms(estimate) == pytest.approx(detector_ms("orin-agx"))
    assert estimated_ms(estimate) < detector_ms("orin-nano") / 2     # not Orin Nano durations


def test_an_explicit_module_needs_no_device_tree(tmp_path):
    estimate = estimate_profile(config(tmp_path, backend="tensorrt", module="xavier-agx"),
                                tmp_path)
    assert estimate.device == "estimate:xavier-agx"
    assert estimate.meta["figures_from"] == "device.module"


def test_the_simulator_is_estimated_on_its_sim_device_whatever_the_module(tmp_path):
    cfg = config(tmp_path, backend="sim", sim_device="orin-nx", module="orin-agx")
    assert which_module(cfg, TREES / "xavier-agx-jp4").module == "orin-nx"
    assert estimate_profile(cfg, TREES / "xavier-agx-jp4").device == "estimate:orin-nx"


def test_an_unknown_cpu_box_keeps_the_old_figures_and_says_so(tmp_path, caplog):
    cfg = config(tmp_path, backend="onnxruntime", sim_device="xavier-agx")   # not read here
    with caplog.at_level(logging.INFO, logger="edgesched.profiles"):
        estimate = estimate_profile(cfg, tmp_path)
    assert estimate.device == "estimate:orin-nano" and estimate.meta["module"] is None
    assert "unknown" in estimate.meta["method"]
    (line,) = [r for r in caplog.records if "figures" in r.getMessage()]
    assert line.levelno == logging.INFO and "orin-nano" in line.getMessage()
    assert "no device-tree model string" in line.getMessage()


def test_an_unknown_module_on_tensorrt_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="edgesched.profiles"):
        estimate = estimate_profile(config(tmp_path, backend="tensorrt"), TREES / "agx-thor-jp7")
    assert estimate.device == "estimate:orin-nano"
    (line,) = [r for r in caplog.records if "figures" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "NVIDIA Jetson AGX Thor Developer Kit" in line.getMessage()
    assert "device.module" in line.getMessage()


# --- which profiles match ----------------------------------------------------------------------

def test_device_keys_name_the_module_on_tensorrt_only(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "_tensorrt_version", lambda: None)   # no TensorRT here
    agx = TREES / "orin-agx-jp5"
    assert device_name(config(tmp_path, backend="tensorrt"), agx) == "tensorrt:orin-agx"
    assert device_name(config(tmp_path, backend="tensorrt", module="orin-nx"), agx) == \
        "tensorrt:orin-nx"
    assert device_name(config(tmp_path, backend="tensorrt"), tmp_path) == "tensorrt"
    assert device_name(config(tmp_path, backend="sim", sim_device="xavier-agx"), agx) == \
        "xavier-agx"                                                   # as before
    cpu = device_name(config(tmp_path, backend="onnxruntime", module="orin-agx"), agx)
    assert cpu.startswith("cpu:") and cpu.endswith("cores")          # as before
    assert current_conditions(config(tmp_path, backend="tensorrt"), agx) == \
        {"device": "tensorrt:orin-agx", "module": "orin-agx",
         "model": "Jetson AGX Orin Developer Kit", "l4t": None, "tensorrt": None}


def test_a_profile_from_another_module_is_refused_in_one_line(tmp_path):
    nx_profile = Profile("tensorrt:orin-nx", {"detector": (SliceDemand(0.9, 0.2, 800.0, 0.7),)})
    here = current_conditions(config(tmp_path, backend="tensorrt"), TREES / "orin-agx-jp6")
    reason = mismatch(nx_profile, here)
    assert "orin-nx" in reason and "orin-agx" in reason and "device.module" in reason
    assert "\n" not in reason
    there = current_conditions(config(tmp_path, backend="tensorrt"), TREES / "orin-nx-jp5")
    assert mismatch(nx_profile, there) is None


def test_the_server_falls_back_to_estimates_on_another_modules_profile(tmp_path, caplog):
    Profile("tensorrt:orin-nx", {"detector": (SliceDemand(0.9, 0.2, 800.0, 0.7),)}).save(
        tmp_path / "p.json")
    cfg = parse_config({"device": {"backend": "tensorrt"}, "telemetry": "none",
                        "scheduler": {"policy": "interference"}, "profile": "p.json",
                        "models": [{"name": "detector", "path": str(DETECTOR), "slo_ms": 33}]},
                       "test.yaml", tmp_path)
    agx = TREES / "orin-agx-jp6"
    with caplog.at_level(logging.WARNING, logger="edgesched.profiles"):
        chosen = choose_profile(cfg, root=agx)
    assert chosen.device == "estimate:orin-agx"
    (line,) = [r.getMessage() for r in caplog.records if "ignoring profile" in r.getMessage()]
    assert "orin-nx" in line and "orin-agx" in line
    assert choose_profile(cfg, force=True, root=agx).device == "tensorrt:orin-nx"
    assert choose_profile(cfg, root=TREES / "orin-nx-8gb-jp6-super").device == "tensorrt:orin-nx"
