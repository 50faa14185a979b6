"""Telemetry straight from sysfs/debugfs, through a root path (tests point it at a fixture tree).

What is read, and from where (every path is relative to `root`; the layout follows what
jetson-stats reads, versions 4.x to 7.2; see tests/fixtures/README.md):

- GPU load: the devfreq device under `sys/class/devfreq/*` whose `device/of_node/name` is
  `gpu` (Orin), `ga10b`, `gv11b` (Xavier) or `gp10b`; its `device/load` is in per-mille
  (0..1000) -> %. Fallbacks when no devfreq entry matches: `sys/devices/platform/gpu.0/load`,
  `sys/devices/gpu.0/load`, `sys/devices/platform/17000000.ga10b/load`,
  `sys/devices/17000000.gv11b/load`. Plain sysfs: readable without root.
- GPU clock: that devfreq device's `cur_freq`, in Hz -> MHz.
- EMC clock: `sys/kernel/debug/bpmp/debug/clk/emc/rate` (Hz; debugfs, root only), else
  Thor's `sys/class/devfreq/bwmgr/cur_freq` (Hz).
- EMC utilization: the first readable of `sys/kernel/debug/cactmon/mc_all` (JetPack 6),
  `sys/kernel/debug/bpmp/debug/actmon/mc_all_avg_activity` (Thor),
  `sys/kernel/actmon_avg_activity/mc_all` (earlier releases, e.g. Xavier). The value is the
  actmon's average memory-controller activity, taken to be in kHz of EMC clock, so
  utilization % = 100 * activity / (EMC rate in kHz). That is MangoHud's formula
  (activity / MHz / 10); jetson-stats (4.x to 7.2) computes `activity // rate_kHz`, without
  the factor 100, and its issue #715 reports "EMC always 0%" on AGX Orin JP6.1 -- consistent
  with kHz. Not confirmed on a board here: compare with tegrastats' EMC_FREQ % before
  trusting absolute values.
- Temperatures: `sys/class/thermal/thermal_zone*/{type,temp}`, temp in milli-degrees C.
  Keys follow sample.normalize_sensor ("cpu-thermal" -> "cpu", "Tdiode_tegra" -> "tdiode"),
  the names tegrastats prints. A zone reading <= -100 C (e.g. -256 C for a powered-off
  CV/GPU cluster) is left out.
- Power: INA3221 monitors under `sys/bus/i2c/devices/*` (a `name` containing "ina3221",
  then `hwmon/hwmon*/in<N>_label`, `in<N>_input` mV, `curr<N>_input` mA). Channels labelled NC
  and channel 7 (sum of shunt voltages) are skipped; the total follows sample.total_power_mw.
- nvpmodel: the current id from `var/lib/nvpmodel/status` (`pmode:0002`, written by nvpmodel),
  else the boot default `< PM_CONFIG DEFAULT=n >`, named through the
  `< POWER_MODEL ID=n NAME=... >` lines of `etc/nvpmodel.conf`.
- jetson_clocks: jetson-stats' test: every online CPU has scaling min == max == cur and the
  GPU devfreq min == max == cur. None when those files cannot be read.

Symlinks inside `root` are followed as the OS follows them: a fixture tree must use relative
links so that nothing resolves outside it. Unreadable or malformed files give None fields;
read() never raises for them (debugfs needs root).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgesched.telemetry.sample import TelemetrySample, normalize_sensor, total_power_mw

GPU_OF_NAMES = ("gpu", "ga10b", "gv11b", "gp10b")
GPU_LOAD_FALLBACKS = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
    "sys/devices/platform/17000000.ga10b/load",
    "sys/devices/17000000.gv11b/load",
)
EMC_ACTIVITY_FILES = (
    "sys/kernel/debug/cactmon/mc_all",
    "sys/kernel/debug/bpmp/debug/actmon/mc_all_avg_activity",
    "sys/kernel/actmon_avg_activity/mc_all",
)
EMC_RATE_FILES = ("sys/kernel/debug/bpmp/debug/clk/emc/rate", "sys/class/devfreq/bwmgr/cur_freq")
NVPMODEL_CONF = "etc/nvpmodel.conf"
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
SENSOR_OFF_C = -100.0      # below this a thermal zone is reporting "no reading" (-256 C)
SHUNT_SUM_CHANNEL = 7      # INA3221 hwmon: the sum of shunt voltages, not a rail
MIN_MAX_CUR = ("min", "max", "cur")

_POWER_MODEL_RE = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>")
_PM_DEFAULT_RE = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>")
_PMODE_RE = re.compile(r"pmode:(\d+)")
_HWMON_LABEL_RE = re.compile(r"in(\d+)_label")


def _text(path: Path) -> str | None:
    """The stripped contents, or None when the file cannot be read (absent, no permission)."""
    try:
        return path.read_text(errors="replace").strip().strip("\x00").strip()
    except OSError:
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:          # e.g. EACCES on a root-only directory on the way
        return False


def _int(path: Path) -> int | None:
    text = _text(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Gpu:
    load: Path            # per-mille load file
    devfreq: Path | None  # directory with cur_freq/min_freq/max_freq (Hz)


def find_gpu(root: Path) -> _Gpu | None:
    """The integrated GPU's load file and devfreq directory under `root`, or None."""
    devfreq = root / "sys/class/devfreq"
    try:
        entries = sorted(devfreq.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        is_gpu = _text(entry / "device/of_node/name") in GPU_OF_NAMES
        if is_gpu and _is_file(entry / "device/load"):
            return _Gpu(load=entry / "device/load", devfreq=entry)
    for rel in GPU_LOAD_FALLBACKS:
        load = root / rel
        if _is_file(load):
            # A GPU device directory keeps its devfreq node at devfreq/<device name>/.
            freq = load.parent / "devfreq" / load.parent.name
            return _Gpu(load=load, devfreq=freq if _is_file(freq / "cur_freq") else None)
    return None


def _first_int(root: Path, candidates: tuple[str, ...]) -> int | None:
    for rel in candidates:
        value = _int(root / rel)
        if value is not None:
            return value
    return None


def _thermal_zones(root: Path) -> list[tuple[str, Path]]:
    zones = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        kind = _text(zone / "type")
        if kind:
            zones.append((normalize_sensor(kind), zone / "temp"))
    return zones


def _power_rails(root: Path) -> list[tuple[str, Path, Path]]:
    """(label, mV file, mA file) for every INA3221 channel that is a real rail."""
    rails = []
    for device in sorted((root / "sys/bus/i2c/devices").glob("*")):
        if "ina3221" not in (_text(device / "name") or ""):
            continue
        for hwmon in sorted(device.glob("hwmon/hwmon*")):
            for label_file in sorted(hwmon.glob("in*_label")):
                match = _HWMON_LABEL_RE.fullmatch(label_file.name)
                label = _text(label_file)
                if not match or not label or "NC" in label or int(match[1]) == SHUNT_SUM_CHANNEL:
                    continue
                n = match[1]
                rails.append((label, hwmon / f"in{n}_input", hwmon / f"curr{n}_input"))
    return rails


def _nvpmodel_names(root: Path) -> tuple[dict[int, str], int | None]:
    conf = _text(root / NVPMODEL_CONF) or ""
    names = {int(i): name for i, name in _POWER_MODEL_RE.findall(conf)}
    default = _PM_DEFAULT_RE.search(conf)
    return names, int(default[1]) if default else None


class SysfsReader:
    """Reads the files listed in the module docstring under `root` on every read()."""

    name = "sysfs"

    def __init__(self, root: Path = Path("/")):
        self.root = Path(root)
        # Discovery once: directory layouts do not change while the board runs.
        self._gpu = find_gpu(self.root)
        self._zones = _thermal_zones(self.root)
        self._rails = _power_rails(self.root)
        self._nvp_names, self._nvp_default = _nvpmodel_names(self.root)

    @staticmethod
    def available(root: Path = Path("/")) -> bool:
        """True when a GPU load file exists under `root` (the one thing this reader needs)."""
        return find_gpu(Path(root)) is not None

    def read(self) -> TelemetrySample:
        now = time.monotonic()
        emc_rate_hz = _first_int(self.root, EMC_RATE_FILES)
        return TelemetrySample(
            time_s=now,
            gpu_load_pct=self._gpu_load_pct(),
            emc_util_pct=self._emc_util_pct(emc_rate_hz),
            gpu_freq_mhz=self._gpu_freq_mhz(),
            emc_freq_mhz=emc_rate_hz / 1e6 if emc_rate_hz else None,
            temps_c=self._temps_c(),
            power_mw=self._power_mw(),
            nvpmodel=self._nvpmodel(),
            jetson_clocks=self._jetson_clocks(),
        )

    def close(self) -> None:
        pass

    # --- one method per field ------------------------------------------------------------

    def _gpu_load_pct(self) -> float | None:
        permille = _int(self._gpu.load) if self._gpu else None
        return permille / 10.0 if permille is not None else None

    def _gpu_freq_mhz(self) -> float | None:
        hz = _int(self._gpu.devfreq / "cur_freq") if self._gpu and self._gpu.devfreq else None
        return hz / 1e6 if hz is not None else None

    def _emc_util_pct(self, emc_rate_hz: int | None) -> float | None:
        activity_khz = _first_int(self.root, EMC_ACTIVITY_FILES)
        if activity_khz is None or not emc_rate_hz or emc_rate_hz <= 0:
            return None
        return 100.0 * activity_khz / (emc_rate_hz / 1000.0)

    def _temps_c(self) -> dict[str, float]:
        temps = {}
        for name, path in self._zones:
            milli = _int(path)
            if milli is not None and milli / 1000.0 > SENSOR_OFF_C:
                temps[name] = milli / 1000.0
        return temps

    def _power_mw(self) -> float | None:
        rails = {}
        for label, mv_file, ma_file in self._rails:
            mv, ma = _int(mv_file), _int(ma_file)
            if mv is not None and ma is not None:
                rails[label] = mv * ma / 1000.0
        return total_power_mw(rails)

    def _nvpmodel(self) -> str | None:
        status = _text(self.root / NVPMODEL_STATUS)
        match = _PMODE_RE.search(status) if status else None
        mode = int(match[1]) if match else self._nvp_default
        return self._nvp_names.get(mode) if mode is not None else None

    def _jetson_clocks(self) -> bool | None:
        triples = []
        for cpufreq in sorted((self.root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
            triples.append(tuple(_int(cpufreq / f"scaling_{k}_freq") for k in MIN_MAX_CUR))
        if self._gpu and self._gpu.devfreq:
            triples.append(tuple(_int(self._gpu.devfreq / f"{k}_freq") for k in MIN_MAX_CUR))
        if not triples or any(v is None for t in triples for v in t):
            return None
        return all(lo == hi == cur for lo, hi, cur in triples)
