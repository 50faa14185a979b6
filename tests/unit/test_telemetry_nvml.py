"""The NVML telemetry reader against a fake `pynvml` module."""
from __future__ import annotations

import sys
import types

import pytest

from edgesched.telemetry import TelemetryUnavailable
from edgesched.telemetry.nvml import NvmlReader

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
