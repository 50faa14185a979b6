"""Choosing a telemetry source: auto order, explicit sources, the real openers."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import edgesched.telemetry as telemetry
from edgesched.telemetry import TelemetrySample, TelemetryUnavailable, open_reader
from edgesched.telemetry.sysfs import SysfsReader
from edgesched.types import TelemetrySource
from tests.unit.telemetry_helpers import SYSFS

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
