"""The sysfs telemetry reader on fixture trees (no board, root or real /sys); power totals."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgesched.telemetry import Reader
from edgesched.telemetry.sample import normalize_sensor, total_power_mw
from edgesched.telemetry.sysfs import SysfsReader
from tests.unit.telemetry_helpers import SYSFS


def copy_tree(board: str, dest: Path) -> Path:
    root = dest / board
    shutil.copytree(SYSFS / board, root, symlinks=True)
    return root


# --- sysfs --------------------------------------------------------------------------------

def test_sysfs_reads_an_agx_orin_tree():
    reader = SysfsReader(SYSFS / "orin")
    s = reader.read()
    assert isinstance(reader, Reader) and reader.name == "sysfs"
    assert s.gpu_load_pct == pytest.approx(34.7)          # load 347 per-mille
    assert s.gpu_freq_mhz == pytest.approx(1300.5)        # cur_freq 1300500000 Hz
    assert s.emc_freq_mhz == pytest.approx(3199.0)        # debugfs emc rate, Hz
    assert s.emc_util_pct == pytest.approx(12.0)          # 100 * 383880 kHz / 3199000 kHz
    assert s.temps_c == pytest.approx({"cpu": 52.562, "gpu": 48.406, "soc0": 49.093,
                                       "soc1": 49.656, "soc2": 48.437, "tj": 52.562})
    # no cv*: those zones read -256 C (cluster powered off)
    assert s.power_mw == pytest.approx(7200 + 2000 + 4500 + 500)  # every rail but NC and in7
    assert s.nvpmodel == "MAXN"                           # status pmode:0000 beats DEFAULT=3
    assert s.jetson_clocks is False
    reader.close()


def test_sysfs_reads_an_agx_xavier_tree():
    s = SysfsReader(SYSFS / "xavier").read()
    assert s.gpu_load_pct == pytest.approx(81.2)
    assert s.gpu_freq_mhz == pytest.approx(1377.0)
    assert (s.emc_util_pct, s.emc_freq_mhz) == pytest.approx((21.0, 2133.0))
    assert s.temps_c == {"cpu": 46.5, "gpu": 45.5, "aux": 45.0, "ao": 45.0, "pmic": 50.0,
                         "tboard": 37.0, "tdiode": 38.75, "thermal": 45.6}   # tegrastats' names
    assert s.power_mw == pytest.approx(8000 + 1500 + 2000 + 0 + 750 + 3500)
    assert s.nvpmodel == "MODE_15W"                       # no status file: the boot default
    assert s.jetson_clocks is True                        # CPUs and GPU pinned min == max == cur


@pytest.mark.parametrize("board", ["orin", "xavier"])
def test_sysfs_without_debugfs_gives_none_not_an_error(tmp_path, board):
    root = copy_tree(board, tmp_path)
    shutil.rmtree(root / "sys/kernel/debug")              # what a non-root user sees
    s = SysfsReader(root).read()
    assert s.emc_freq_mhz is None and s.emc_util_pct is None
    assert s.gpu_load_pct is not None and s.gpu_freq_mhz is not None and s.temps_c


def test_sysfs_unreadable_or_garbled_files_give_none(tmp_path):
    root = copy_tree("orin", tmp_path)
    load = root / "sys/devices/platform/17000000.ga10b/load"
    load.unlink()
    load.mkdir()                                          # reading it raises IsADirectoryError
    (root / "sys/kernel/debug/cactmon/mc_all").write_text("n/a\n")
    (root / "sys/devices/virtual/thermal/thermal_zone0/temp").write_text("")
    (root / "var/lib/nvpmodel/status").write_text("pmode:0009\n")   # no such mode in the conf
    s = SysfsReader(root).read()
    assert s.gpu_load_pct is None and s.emc_util_pct is None and s.nvpmodel is None
    assert "cpu" not in s.temps_c and "tj" in s.temps_c
    assert s.emc_freq_mhz == pytest.approx(3199.0)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads through any file mode")
def test_sysfs_root_only_debugfs_gives_none(tmp_path):
    root = copy_tree("orin", tmp_path)
    debug = root / "sys/kernel/debug"
    debug.chmod(0o000)                                   # as /sys/kernel/debug is for users
    try:
        s = SysfsReader(root).read()
    finally:
        debug.chmod(0o755)
    assert s.emc_util_pct is None and s.emc_freq_mhz is None and s.gpu_load_pct == 34.7


def test_sysfs_reads_only_under_its_root(monkeypatch):
    root = SYSFS / "orin"
    opened: list[Path] = []
    real = Path.read_text

    def spy(self, *args, **kwargs):
        opened.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", spy)
    SysfsReader(root).read()
    assert opened and all(p.is_relative_to(root) for p in opened)


def test_sysfs_fixed_fallback_and_availability(tmp_path):
    assert SysfsReader.available(SYSFS / "orin") and SysfsReader.available(SYSFS / "xavier")
    assert not SysfsReader.available(tmp_path)
    (tmp_path / "sys/devices/platform/gpu.0").mkdir(parents=True)
    (tmp_path / "sys/devices/platform/gpu.0/load").write_text("500\n")
    assert SysfsReader.available(tmp_path)
    s = SysfsReader(tmp_path).read()
    assert s.gpu_load_pct == 50.0
    assert (s.gpu_freq_mhz, s.emc_util_pct, s.power_mw, s.nvpmodel, s.jetson_clocks) == (None,) * 5
    assert s.temps_c == {}


def test_power_total_and_sensor_names():
    assert total_power_mw({"VDD_IN": 5000, "VDD_SOC": 1200}) == 5000
    assert total_power_mw({"VIN": 20000, "VDD_GPU": 4000, "VIN_SYS_5V0": 5000}) == 20000
    assert total_power_mw({"GPU": 100, "CPU": 200, "NC": 999}) == 300
    assert total_power_mw({}) is None
    names = ("CPU-therm", "cpu-thermal", "CPU", "Tboard_tegra", "PMIC-Die", "soc012", "tj")
    assert [normalize_sensor(n) for n in names] == ["cpu", "cpu", "cpu", "tboard", "pmic",
                                                    "soc012", "tj"]
