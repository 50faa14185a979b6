"""Telemetry readers on fixture trees and captured-format lines, fake jtop/pynvml modules,
source selection, and the Sampler's windows. No board, no root, no real /sys."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

import edgesched.telemetry as telemetry
from edgesched.errors import EdgeschedError
from edgesched.telemetry import (
    Reader,
    Sampler,
    TelemetrySample,
    TelemetryUnavailable,
    open_reader,
)
from edgesched.telemetry.jtop import JtopReader
from edgesched.telemetry.nvml import NvmlReader
from edgesched.telemetry.sample import normalize_sensor, total_power_mw
from edgesched.telemetry.sysfs import SysfsReader
from edgesched.telemetry.tegrastats import TegrastatsReader, parse_line
from edgesched.types import TelemetrySource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYSFS = FIXTURES / "sysfs"
TEGRASTATS = FIXTURES / "tegrastats"


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


# --- tegrastats ---------------------------------------------------------------------------

def fixture_lines(name: str) -> list[str]:
    return [line for line in (TEGRASTATS / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")]


# (file, data line index) -> (gpu %, gpu MHz, emc %, emc MHz, power mW, some temperatures)
EXPECTED = {
    ("orin_jp5.txt", 0): (0.0, 0.0, 0.0, 2133.0, 2156 + 431 + 3912 + 276,
                          {"cpu": 43.906, "tj": 43.906, "tboard": 31.0}),
    ("orin_jp5.txt", 1): (97.0, 1300.0, 41.0, 3199.0, 17942 + 2731 + 6120 + 1503,
                          {"gpu": 56.468, "soc1": 52.906}),
    ("orin_jp6.txt", 0): (0.0, 0.0, 3.0, 2133.0, 2297 + 807 + 4588, {"gpu": 44.5, "cpu": 47.843}),
    ("orin_jp6.txt", 1): (99.0, 1300.0, 58.0, 3199.0, 21486 + 3112 + 6344, {"gpu": 59.187}),
    ("orin_jp6.txt", 2): (93.0, 612.0, 47.0, 2133.0, 14872, {"gpu": 57.156}),        # VDD_IN
    ("xavier_jp5.txt", 0): (0.0, 114.0, 0.0, 1331.0, 0 + 621 + 1396 + 0 + 310 + 2891,
                            {"gpu": 37.0, "aux": 37.5, "pmic": 50.0}),
    ("xavier_jp5.txt", 1): (88.0, 1377.0, 37.0, 2133.0, 9462 + 1244 + 2487 + 0 + 1399 + 3891,
                            {"gpu": 47.0, "tdiode": 44.25}),
    ("xavier_jp5.txt", 2): (54.0, 1109.0, 9.0, 1600.0, 5921, {"gpu": 44.5}),          # VDD_IN
    ("thor_jp7.txt", 0): (None, None, None, None, 71230, {"gpu": 61.75, "soc345": 60.218}),  # VIN
    ("thor_jp7.txt", 1): (None, None, None, None, 15420, {"cpu": 36.906}),
    ("thor_jp7.txt", 2): (None, 314.0, 0.0, 2750.0, 20344, {"soc012": 37.468}),
    ("thor_jp7.txt", 3): (76.0, 1300.0, 28.0, 3199.0, 14210 + 2947 + 5622,
                          {"cpu": 51.25, "gpu": 53.781}),
}


def test_every_fixture_line_has_an_expectation():
    files = sorted(p.name for p in TEGRASTATS.glob("*.txt"))
    assert files == ["orin_jp5.txt", "orin_jp6.txt", "thor_jp7.txt", "xavier_jp5.txt"]
    assert set(EXPECTED) == {(f, i) for f in files for i in range(len(fixture_lines(f)))}


@pytest.mark.parametrize("name,index", sorted(EXPECTED))
def test_parse_fixture_line(name, index):
    gpu, gpu_mhz, emc, emc_mhz, power, temps = EXPECTED[name, index]
    s = parse_line(fixture_lines(name)[index] + "\n", time_s=12.5)
    assert s.time_s == 12.5
    got = (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_util_pct, s.emc_freq_mhz)
    assert got == (gpu, gpu_mhz, emc, emc_mhz)
    assert s.power_mw == pytest.approx(power)
    for sensor, c in temps.items():
        assert s.temps_c[sensor] == pytest.approx(c)
    assert all(c > -100 for c in s.temps_c.values())     # -256 C "sensor off" dropped
    assert s.nvpmodel is None and s.jetson_clocks is None


@pytest.mark.parametrize("line,expected", [
    ("RAM 1689/3825MB (lfb 339x4MB) CPU [3%@345,off] EMC_FREQ 0% GR3D_FREQ 0% GPU@50C",
     (0.0, None, 0.0, None)),                            # JetPack 4 without root: no clocks
    ("RAM 2000/3964MB (lfb 1x4MB) EMC_FREQ 7%@1600 GR3D_FREQ 45%@921 POM_5V_IN 4200/4100 "
     "POM_5V_GPU 1200/1100", (45.0, 921.0, 7.0, 1600.0)),  # JetPack 4 Nano, unit-less rails
    ("RAM 1000/7620MB GR3D_FREQ off EMC_FREQ @2133", (0.0, None, None, 2133.0)),
])
def test_parse_older_and_partial_forms(line, expected):
    s = parse_line(line)
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_util_pct, s.emc_freq_mhz) == expected
    if "POM_5V_IN" in line:
        assert s.power_mw == 4200


@pytest.mark.parametrize("line", [
    "", "   \n", "hello world", "Traceback (most recent call last):\n  oops",
    "RAM 1000/7620MB GR3D_FREQ abc%@12", "RAM 1000/7620MB EMC_FREQ 12%@",
    "GR3D_FREQ 12%@[1300,", "EMC_FREQ %@ GR3D_FREQ 1%@1", "x" * 500,
])
def test_parse_malformed_line_raises_one_line_value_error(line):
    with pytest.raises(ValueError) as info:
        parse_line(line)
    assert "\n" not in str(info.value) and len(str(info.value)) < 120


FAKE_TEGRASTATS = """
import sys, time
line = open(sys.argv[1]).read().strip()
while True:
    print(line, flush=True)
    time.sleep(0.01)
"""


def fake_command(tmp_path: Path, line: str) -> tuple[str, ...]:
    path = tmp_path / "line.txt"
    path.write_text(line + "\n")
    return (sys.executable, "-c", FAKE_TEGRASTATS, str(path))


def test_tegrastats_reader_runs_the_command_and_parses_its_latest_line(tmp_path):
    line = fixture_lines("orin_jp6.txt")[1]
    reader = TegrastatsReader(fake_command(tmp_path, line))
    try:
        s = reader.read()
        assert (s.gpu_load_pct, s.emc_util_pct, s.power_mw) == (99.0, 58.0, 21486 + 3112 + 6344)
        assert reader.read().time_s >= s.time_s
    finally:
        reader.close()
    reader.close()                                       # idempotent
    with pytest.raises(TelemetryUnavailable):
        reader.read()                                    # the tool is gone


def test_tegrastats_reader_reports_garbage_output_as_value_error(tmp_path):
    reader = TegrastatsReader(fake_command(tmp_path, "some unrelated program output"))
    try:
        with pytest.raises(ValueError, match="not a tegrastats line"):
            reader.read()
        assert reader.bad_lines >= 1
    finally:
        reader.close()


def test_tegrastats_reader_failures_are_telemetry_unavailable(tmp_path):
    with pytest.raises(TelemetryUnavailable, match="cannot run"):
        TegrastatsReader((str(tmp_path / "no-such-tegrastats"), "--interval", "100"))
    exits = TegrastatsReader((sys.executable, "-c", "import sys; sys.exit(3)"))
    try:
        with pytest.raises(TelemetryUnavailable, match="exit status 3"):
            exits.read()
    finally:
        exits.close()
    silent = TegrastatsReader((sys.executable, "-c", "import time; time.sleep(30)"),
                              first_line_timeout_s=0.2)
    try:
        with pytest.raises(TelemetryUnavailable, match="printed nothing"):
            silent.read()
    finally:
        silent.close()


# --- jtop (fake module) ---------------------------------------------------------------------

class FakeNvpmodel:
    def __init__(self, name, id_):
        self.name, self.id = name, id_


class FakeJetsonClocks:
    def __init__(self, status):
        self.status = status


def fake_jtop_module(monkeypatch, *, fail: str | None = None, **attributes):
    module = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class jtop:  # noqa: N801  (the real class is lower-case)
        instances: list = []

        def __init__(self, interval=1.0):
            self.interval, self.closed, self.running, self.error = interval, False, True, None
            self.__dict__.update(attributes)
            jtop.instances.append(self)

        def start(self):
            if fail:
                raise JtopException(fail)

        def ok(self, spin=False):
            assert spin, "a blocking ok() would stall read() for up to one jtop interval"
            if self.error:
                raise self.error
            return self.running

        def close(self):
            self.closed, self.running = True, False

    module.jtop, module.JtopException = jtop, JtopException
    monkeypatch.setitem(sys.modules, "jtop", module)
    return module


def test_jtop_maps_its_data_into_a_sample(monkeypatch):
    module = fake_jtop_module(
        monkeypatch,
        stats={"GPU": 45.0, "EMC": 23, "jetson_clocks": "ON"},
        gpu={"ga10b": {"type": "integrated", "status": {"load": 44.0},
                       "freq": {"cur": 918000, "max": 1300500, "min": 306000}}},
        memory={"EMC": {"online": True, "val": 22, "cur": 3199000, "max": 3199000, "min": 204000}},
        temperature={"cpu": {"online": True, "temp": 50.5}, "gpu": {"online": True, "temp": 48.0},
                     "cv0": {"online": False, "temp": -256.0}},
        power={"rail": {"VDD_GPU_SOC": {"power": 7000}}, "tot": {"power": 15321, "avg": 14000}},
        nvpmodel=FakeNvpmodel("MODE_30W", 2),
        jetson_clocks=FakeJetsonClocks("running"),
    )
    reader = JtopReader(interval_s=0.25)
    s = reader.read()
    assert module.jtop.instances[0].interval == 0.25 and reader.name == "jtop"
    assert (s.gpu_load_pct, s.emc_util_pct) == (45.0, 23.0)
    assert (s.gpu_freq_mhz, s.emc_freq_mhz) == (918.0, 3199.0)   # jtop reports kHz
    assert s.temps_c == {"cpu": 50.5, "gpu": 48.0}
    assert s.power_mw == 15321 and s.nvpmodel == "MODE_30W" and s.jetson_clocks is True
    reader.close()
    reader.close()
    assert module.jtop.instances[0].closed


def test_jtop_missing_fields_give_none(monkeypatch):
    fake_jtop_module(monkeypatch, stats={"GPU": "OFF"}, memory={},
                     gpu={"gv11b": {"status": {"load": 12.5}, "freq": {}}},
                     temperature={"CPU": 41.0, "PLL": -256.0},       # jtop 3.x: name -> C
                     power=None, nvpmodel=None, jetson_clocks=FakeJetsonClocks("inactive"))
    s = JtopReader().read()
    assert s.gpu_load_pct == 12.5                        # from j.gpu when stats has no number
    assert (s.emc_util_pct, s.gpu_freq_mhz, s.emc_freq_mhz, s.power_mw, s.nvpmodel) == (None,) * 5
    assert s.temps_c == {"cpu": 41.0} and s.jetson_clocks is False


def test_jtop_service_not_running_is_one_clear_line(monkeypatch):
    module = fake_jtop_module(monkeypatch, fail="The jtop.service is not active. Please run:\n"
                                       "sudo jtop --install-service")
    with pytest.raises(TelemetryUnavailable) as info:
        JtopReader()
    message = str(info.value)
    assert "\n" not in message and "systemctl restart jtop.service" in message
    assert "not active. Please run: sudo jtop --install-service" in message
    assert isinstance(info.value, EdgeschedError)
    assert module.jtop.instances[0].closed              # the half-started client is let go


def test_jtop_not_installed_and_lost_connection(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)       # makes `import jtop` raise ImportError
    with pytest.raises(TelemetryUnavailable, match="jetson-stats"):
        JtopReader()
    module = fake_jtop_module(monkeypatch, stats={})
    reader = JtopReader()
    client = module.jtop.instances[0]
    assert reader.read().gpu_load_pct is None
    client.error = module.JtopException("Lost connection with jtop server")
    with pytest.raises(TelemetryUnavailable, match="Lost connection with jtop server"):
        reader.read()
    client.error, client.running = None, False
    with pytest.raises(TelemetryUnavailable, match="stopped sending data"):
        reader.read()
    reader.close()
    with pytest.raises(TelemetryUnavailable, match="closed"):
        reader.read()


# --- NVML (fake module) ---------------------------------------------------------------------

def fake_pynvml(monkeypatch, *, driver: bool = True, gpus: int = 1):
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    calls = {"shutdown": 0}

    def init():
        if not driver:
            raise NVMLError("Driver Not Loaded")

    def handle(index):
        if index >= gpus:
            raise NVMLError("Invalid Argument")
        return ("gpu", index)

    def not_supported(handle):
        raise NVMLError("Not Supported")

    module.NVMLError = NVMLError
    module.NVML_CLOCK_GRAPHICS, module.NVML_CLOCK_MEM, module.NVML_TEMPERATURE_GPU = 0, 2, 0
    module.nvmlInit = init
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=63, memory=27)
    module.nvmlDeviceGetClockInfo = lambda h, kind: {0: 1410, 2: 1593}[kind]
    module.nvmlDeviceGetTemperature = lambda h, sensor: 61
    module.nvmlDeviceGetPowerUsage = not_supported        # e.g. Jetson: no power readout
    module.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    module.calls = calls
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_nvml_reads_utilization_clocks_and_temperature(monkeypatch):
    module = fake_pynvml(monkeypatch)
    reader = NvmlReader(index=0)
    s = reader.read()
    got = (s.gpu_load_pct, s.emc_util_pct, s.gpu_freq_mhz, s.emc_freq_mhz)
    assert got == (63.0, 27.0, 1410.0, 1593.0)
    assert s.temps_c == {"gpu": 61.0} and s.power_mw is None   # "Not Supported" -> None
    reader.close()
    reader.close()
    assert module.calls["shutdown"] == 1


def test_nvml_unavailable_cases(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(TelemetryUnavailable, match="nvidia-ml-py"):
        NvmlReader()
    fake_pynvml(monkeypatch, driver=False)
    with pytest.raises(TelemetryUnavailable, match="Driver Not Loaded"):
        NvmlReader()
    module = fake_pynvml(monkeypatch, gpus=1)
    with pytest.raises(TelemetryUnavailable, match="index 3"):
        NvmlReader(index=3)
    assert module.calls["shutdown"] == 1                 # init undone


# --- choosing a source ----------------------------------------------------------------------

class StubReader:
    def __init__(self, name: str):
        self.name = name

    def read(self) -> TelemetrySample:
        return TelemetrySample(time_s=0.0)

    def close(self) -> None:
        pass


def stub_openers(monkeypatch, working: set[str]) -> list[str]:
    tried: list[str] = []
    for source in telemetry.AUTO_ORDER:
        def opener(root, name=source.value):
            tried.append(name)
            if name not in working:
                raise TelemetryUnavailable(f"{name} is not here")
            return StubReader(name)
        monkeypatch.setitem(telemetry.OPENERS, source, opener)
    return tried


@pytest.mark.parametrize("working,chosen,tried", [
    ({"jtop", "sysfs", "tegrastats", "nvml"}, "jtop", ["jtop"]),
    ({"sysfs", "tegrastats"}, "sysfs", ["jtop", "sysfs"]),
    ({"tegrastats", "nvml"}, "tegrastats", ["jtop", "sysfs", "tegrastats"]),
    ({"nvml"}, "nvml", ["jtop", "sysfs", "tegrastats", "nvml"]),
])
def test_auto_tries_sources_in_order(monkeypatch, working, chosen, tried):
    order = stub_openers(monkeypatch, working)
    assert open_reader("auto").name == chosen
    assert order == tried


def test_auto_with_nothing_logs_one_line_and_returns_none(monkeypatch, caplog):
    stub_openers(monkeypatch, set())
    with caplog.at_level(logging.INFO, logger="edgesched.telemetry"):
        assert open_reader(TelemetrySource.AUTO) is None
    records = [r for r in caplog.records if r.name == "edgesched.telemetry"]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    assert "jtop is not here" in records[0].getMessage() and "nvml" in records[0].getMessage()


def test_explicit_sources_raise_and_none_is_none(monkeypatch):
    stub_openers(monkeypatch, {"sysfs"})
    assert open_reader("none") is None
    assert open_reader("sysfs").name == "sysfs"
    with pytest.raises(TelemetryUnavailable, match="jtop is not here"):
        open_reader("jtop")
    with pytest.raises(TelemetryUnavailable, match="unknown telemetry source 'jetson'"):
        open_reader("jetson")


def test_real_openers_under_a_fixture_root(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jtop", None)       # no jetson-stats on this machine
    reader = open_reader("auto", root=SYSFS / "orin")
    assert isinstance(reader, SysfsReader) and reader.read().nvpmodel == "MAXN"
    assert isinstance(open_reader("sysfs", root=SYSFS / "xavier"), SysfsReader)
    with pytest.raises(TelemetryUnavailable, match="no Jetson GPU load file"):
        open_reader("sysfs", root=tmp_path)
    monkeypatch.setattr(telemetry.shutil, "which", lambda name: None)
    with pytest.raises(TelemetryUnavailable, match="not on PATH"):
        open_reader("tegrastats")


def test_tegrastats_opener_line_buffers_through_stdbuf(monkeypatch):
    import edgesched.telemetry.tegrastats as tegrastats_module
    commands = []
    monkeypatch.setattr(tegrastats_module, "TegrastatsReader",
                        lambda command: commands.append(command) or StubReader("tegrastats"))
    monkeypatch.setattr(telemetry.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert open_reader("tegrastats").name == "tegrastats"
    monkeypatch.setattr(telemetry.shutil, "which",
                        lambda name: None if name == "stdbuf" else f"/usr/bin/{name}")
    open_reader("tegrastats")
    assert commands == [("stdbuf", "-oL", "tegrastats", "--interval", "100"),
                        ("tegrastats", "--interval", "100")]


def test_importing_edgesched_imports_neither_jtop_nor_pynvml():
    code = ("import sys, edgesched, edgesched.telemetry, edgesched.telemetry.jtop, "
            "edgesched.telemetry.nvml; print('jtop' in sys.modules, 'pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- Sampler --------------------------------------------------------------------------------

class ScriptedReader:
    """Sample k carries time_s = k (a fake clock) and gpu_load_pct = 10 k; reads listed in
    `fail_on` raise; `done` is set after `until` successful reads."""

    name = "scripted"

    def __init__(self, until: int, fail_on: frozenset[int] = frozenset()):
        self.calls = 0
        self.k = 0
        self.until, self.fail_on = until, fail_on
        self.done = threading.Event()

    def read(self) -> TelemetrySample:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"flaky read {self.calls}")
        k = self.k = self.k + 1
        if k >= self.until:
            self.done.set()
        return TelemetrySample(
            time_s=float(k), gpu_load_pct=10.0 * k,
            emc_util_pct=float(k) if k % 2 == 0 else None,        # only even samples have it
            temps_c={"cpu": 40.0 + k} if k <= 3 else {"gpu": 50.0},
            nvpmodel="MAXN" if k < 4 else "MODE_15W", jetson_clocks=k % 2 == 0)

    def close(self) -> None:
        pass


def test_sampler_window_averages(monkeypatch):
    reader = ScriptedReader(until=6)
    with Sampler(reader, interval_s=0.001) as sampler:
        assert reader.done.wait(5.0)
    assert not sampler.running
    w = sampler.window(2.0, 5.0)                          # samples k = 2, 3, 4, 5
    assert w.time_s == 5.0
    assert w.gpu_load_pct == pytest.approx(35.0)
    assert w.emc_util_pct == pytest.approx(3.0)           # mean of k = 2 and 4 only
    assert w.gpu_freq_mhz is None and w.power_mw is None  # no sample had them
    assert w.temps_c == pytest.approx({"cpu": 42.5, "gpu": 50.0})
    assert w.nvpmodel == "MODE_15W" and w.jetson_clocks is False   # the newest values
    assert sampler.window(3.0).gpu_load_pct == pytest.approx(
        sum(10.0 * k for k in range(3, reader.k + 1)) / (reader.k - 2))
    empty = sampler.window(100.0, 200.0)
    assert empty == TelemetrySample(time_s=200.0)
    assert sampler.latest().time_s == float(reader.k)


def test_sampler_survives_read_errors_and_logs_once(caplog):
    reader = ScriptedReader(until=5, fail_on=frozenset({2, 3, 4}))
    sampler = Sampler(reader, interval_s=0.001)
    with caplog.at_level(logging.WARNING, logger="edgesched.telemetry.sampler"):
        sampler.start()
        assert reader.done.wait(5.0)
        assert sampler.running
        sampler.stop()
    assert sampler.errors == 3 and sampler.reads >= 5
    assert "flaky read 4" in sampler.last_error
    warnings = [r for r in caplog.records if r.name == "edgesched.telemetry.sampler"]
    assert len(warnings) == 1 and "flaky read 2" in warnings[0].getMessage()


def test_sampler_ring_buffer_is_bounded_and_stop_is_final():
    reader = ScriptedReader(until=12)
    sampler = Sampler(reader, interval_s=0.001, capacity=5)
    assert sampler.latest() is None
    sampler.start()
    sampler.start()                                      # already running: no second thread
    assert reader.done.wait(5.0)
    sampler.stop()
    kept = sampler.samples()
    assert [s.time_s for s in kept] == [float(k) for k in range(reader.k - 4, reader.k + 1)]
    calls = reader.calls
    sampler.stop()
    assert reader.calls == calls                         # nothing reads after stop()
    with pytest.raises(ValueError):
        Sampler(reader, interval_s=0)
