"""One telemetry reading and the Protocol every reader implements.

Every field but the time is optional: each source sees a different subset (debugfs needs
root, Thor's tegrastats prints no GPU load, NVML knows no power mode), and a missing value is
None, never a guessed zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# The numeric fields a window can average (TelemetrySample.temps_c is averaged per sensor).
NUMERIC_FIELDS = ("gpu_load_pct", "emc_util_pct", "gpu_freq_mhz", "emc_freq_mhz", "power_mw")


@dataclass(frozen=True)
class TelemetrySample:
    time_s: float                       # time.monotonic() seconds when the values were read
    gpu_load_pct: float | None = None   # iGPU busy share, 0..100, at the current GPU clock
    emc_util_pct: float | None = None   # share of EMC (DRAM) bandwidth at the current EMC clock
    gpu_freq_mhz: float | None = None
    emc_freq_mhz: float | None = None
    temps_c: dict[str, float] = field(default_factory=dict)   # sensor name -> degrees C
    power_mw: float | None = None       # total input power (see each reader for the rails)
    nvpmodel: str | None = None         # power mode name, e.g. "MAXN", "MODE_30W"
    jetson_clocks: bool | None = None   # clocks pinned at their maximum


@runtime_checkable
class Reader(Protocol):
    """A telemetry source. read() may raise (the Sampler counts and survives it); close() is
    idempotent and releases processes, sockets or library handles."""

    name: str

    def read(self) -> TelemetrySample: ...

    def close(self) -> None: ...


# Rails that measure the whole input, first found wins: jetson-stats 7.2's rule (VIN is
# Thor's carrier-board input, VDD_IN the module input on Orin NX/Nano and Xavier NX,
# POM_5V_IN on Nano/TX2). Without one of them the total is the sum of every rail reported,
# also as jetson-stats does (AGX Orin: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0, plus
# VDDQ_VDD2_1V8AO on JetPack 5; AGX Xavier: GPU + CPU + SOC + CV + VDDRQ + SYS5V).
TOTAL_RAILS = ("VIN", "POM_5V_IN", "VDD_IN")


def total_power_mw(rails_mw: dict[str, float]) -> float | None:
    """Total input power from per-rail readings (names as tegrastats/INA3221 label them);
    None when there are none. Rails labelled NC (not connected) never count."""
    rails = {name: mw for name, mw in rails_mw.items() if name != "NC"}
    for name in TOTAL_RAILS:
        if name in rails:
            return float(rails[name])
    return float(sum(rails.values())) if rails else None


def normalize_sensor(name: str) -> str:
    """One key per sensor across readers: jetson-stats' rule for a thermal zone type (the
    part before the first "-", else before the first "_"), lowercased. So sysfs'
    "CPU-therm", "cpu-thermal", "Tdiode_tegra", "PMIC-Die" and tegrastats' "CPU@", "cpu@",
    "Tdiode@", "PMIC@" meet as "cpu", "tdiode", "pmic"."""
    key = name.strip()
    key = key.split("-")[0] if "-" in key else key.split("_")[0]
    return (key or name.strip()).lower()
