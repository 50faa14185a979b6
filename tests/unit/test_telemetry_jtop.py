"""The jtop (jetson-stats) telemetry reader against a fake `jtop` module."""
from __future__ import annotations

import sys
import types

import pytest

from edgesched.errors import EdgeschedError
from edgesched.telemetry import TelemetryUnavailable
from edgesched.telemetry.jtop import JtopReader

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
