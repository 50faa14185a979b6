"""Parsing captured tegrastats lines, and the reader that runs a (fake) tegrastats command."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgesched.telemetry import TelemetryUnavailable
from edgesched.telemetry.tegrastats import TegrastatsReader, parse_line
from tests.unit.telemetry_helpers import TEGRASTATS

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
