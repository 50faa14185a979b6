"""The Jetson modules edgesched has figures for: their names, their specs, and how the
device-tree model string of a board names one.

Plain data, importing nothing of edgesched, so that config (validation), profiles (estimates
and profile matching), the simulator and the device-tree reader can all share it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    sms: int
    gpu_mhz: int
    peak_ops: float           # dense INT8 tensor ops/s (the precision the simulator runs)
    dram_bytes_per_s: float
    l2_bytes: int
    launch_us: float          # per-kernel launch and scheduling cost on the GPU
    # Fitted so ResNet-50 INT8 batch 1 lands within 8% of MLPerf's p50 on AGX Orin (0.636 ms),
    # Orin NX (1.078) and AGX Xavier (1.817); see tests/sim/test_sim_device.py.
    compute_efficiency: float = 0.35   # achieved / peak tensor ops at batch 1
    memory_efficiency: float = 0.90    # achieved / peak DRAM bandwidth
    stream_priorities: bool = True


# From ../shared/JETSON_FIGURES.md, max power mode, the largest module of each family (AGX Orin
# 64GB, Orin NX 16GB, Orin Nano 8GB): a device-tree model string names the family, not the
# memory size. Dense INT8: AGX Orin 85 TOPS and Nano 20 (data sheets); NX derived from AGX by
# SMs and clock; Xavier 22 (64 Volta tensor cores at 1377 MHz). Launch cost: tiny kernels run
# 4-9 us on Xavier (8 used); Orin's newer front end fits 3 us.
SPECS = {
    "orin-agx": DeviceSpec("orin-agx", 16, 1300, 85e12, 204.8e9, 4 << 20, 3.0),
    "orin-nx": DeviceSpec("orin-nx", 8, 918, 85e12 * 8 / 16 * 918 / 1300, 102.4e9, 2 << 20, 3.0),
    "orin-nano": DeviceSpec("orin-nano", 8, 625, 20e12, 68e9, 2 << 20, 3.0),
    "xavier-agx": DeviceSpec("xavier-agx", 8, 1377, 22e12, 136.5e9, 512 << 10, 8.0),
}
# Config values of `device.module` and `device.sim_device`.
MODULES = tuple(SPECS)

# Device-tree model strings -> module, tried in order on the string lower-cased with '-' and
# '_' read as spaces. The strings differ by release and carrier board ("Jetson AGX Orin
# Developer Kit" on Jetson Linux 35, "NVIDIA Jetson AGX Orin Developer Kit" on 36, "NVIDIA Orin
# Nano Developer Kit" without "Jetson" on 35, "... Engineering Reference Developer Kit Super"
# on 36.4, "Jetson-AGX" for AGX Xavier on 32.2+); tests/fixtures/devicetree/README.md lists
# each one seen and its source. Xavier NX, Nano, TX2 and Thor match nothing: no figures.
_MODEL_RULES = (
    (re.compile(r"\bagx orin\b"), "orin-agx"),
    (re.compile(r"\borin nx\b"), "orin-nx"),
    (re.compile(r"\borin nano\b"), "orin-nano"),
    # Jetson Linux 32.1 said "jetson-xavier", 32.2 and later "Jetson-AGX": the whole string.
    (re.compile(r"\bagx xavier\b|^jetson agx$|^jetson xavier$"), "xavier-agx"),
)


def module_for_model(model: str) -> str | None:
    """The module a device-tree model string names, or None (not a module in MODULES)."""
    text = " ".join(re.sub(r"[-_]", " ", model.lower()).split())
    for pattern, module in _MODEL_RULES:
        if pattern.search(text):
            return module
    return None
