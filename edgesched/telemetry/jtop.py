"""Telemetry from jetson-stats' `jtop` client: the only module that imports jtop (lazily).

jtop reads sysfs/debugfs inside `jtop.service` (root), so it sees what an unprivileged
SysfsReader cannot (EMC clock and activity, GPC clocks). Mapping, checked against the
jetson-stats 7.2 client (4.x has the same shapes):
- gpu_load_pct  <- j.stats['GPU'] (%), else the first integrated entry of j.gpu ['status']['load']
- gpu_freq_mhz  <- j.gpu[name]['freq']['cur'] (kHz: jtop divides devfreq's Hz by 1000)
- emc_util_pct  <- j.stats['EMC'] (%), else j.memory['EMC']['val']: jtop's own number,
                   `activity // rate_kHz`, which sysfs.py argues lacks a factor 100 (it
                   reads 0 % on AGX Orin JP6.1, jetson-stats issue #715); passed through
                   as is, since jtop does not expose the raw activity
- emc_freq_mhz  <- j.memory['EMC']['cur'] (kHz)
- temps_c       <- j.temperature: {name: {'temp': C, 'online': bool}} (4.x) or {name: C} (3.x)
- power_mw      <- j.power['tot']['power'] (mW)
- nvpmodel      <- j.nvpmodel.name (e.g. "MAXN", "MODE_30W")
- jetson_clocks <- j.jetson_clocks.status == 'running' (or bool(j.jetson_clocks))
Every lookup is defensive: a key a board or version lacks gives a None field. Liveness:
jtop's client thread stores its errors ("Lost connection with jtop server") and
`j.ok(spin=True)` re-raises them without blocking; read() turns them into
TelemetryUnavailable.
"""
from __future__ import annotations

import math
import time
from typing import Any

from edgesched.errors import TelemetryUnavailable
from edgesched.telemetry.sample import TelemetrySample, normalize_sensor

SENSOR_OFF_C = -100.0
START_HINT = "start it with: sudo systemctl restart jtop.service"


def _num(value: Any) -> float | None:
    """A finite float, or None for anything else (missing keys, 'OFF', NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _one_line(error: BaseException) -> str:
    """jtop's messages span lines ("...not active. Please run:\nsudo jtop --install-service")."""
    return " ".join(str(error).split()) or type(error).__name__


def _get(mapping: Any, *keys: Any) -> Any:
    """mapping[k0][k1]... or None when any level is missing or not subscriptable."""
    for key in keys:
        try:
            mapping = mapping[key]
        except (KeyError, IndexError, TypeError):
            return None
    return mapping


class JtopReader:
    """A connection to jtop.service; read() maps its latest data into a TelemetrySample."""

    name = "jtop"

    def __init__(self, interval_s: float = 0.1):
        try:
            import jtop as jtop_module  # jetson-stats; heavy and Jetson-only, so imported here
        except ImportError:
            raise TelemetryUnavailable("jtop is not installed (pip install jetson-stats, "
                                       "then start jtop.service)") from None
        jtop_error = getattr(jtop_module, "JtopException", Exception)
        self._jtop_error: type[BaseException] = jtop_error
        self._jtop = None
        try:
            self._jtop = jtop_module.jtop(interval=interval_s)
            self._jtop.start()
        except jtop_error as e:
            self._abandon()
            raise TelemetryUnavailable(f"cannot use jtop.service: {_one_line(e)}; "
                                       f"{START_HINT}") from None
        except OSError as e:        # socket missing, or not in group 'jtop'
            self._abandon()
            raise TelemetryUnavailable(f"cannot connect to jtop.service ({_one_line(e)}); "
                                       f"{START_HINT} and add this user to group 'jtop'") from None
        self._closed = False
        # the board's model string, for profile identity where there is no device tree to
        # read: jetson-stats 4.x+ `board["hardware"]["Model"]` (unconfirmed on 7.x: defensive)
        model = _get(getattr(self._jtop, "board", None), "hardware", "Model")
        self.board_model: str | None = str(model).strip() or None if model else None

    def read(self) -> TelemetrySample:
        j = self._jtop
        if self._closed:
            raise TelemetryUnavailable("the jtop reader is closed")
        try:
            alive = j.ok(spin=True) if hasattr(j, "ok") else True
        except self._jtop_error as e:
            raise TelemetryUnavailable(f"lost jtop.service: {_one_line(e)}; {START_HINT}") from None
        if not alive:
            raise TelemetryUnavailable(f"jtop.service stopped sending data; {START_HINT}")
        stats = getattr(j, "stats", None) or {}
        gpu = self._first_gpu(getattr(j, "gpu", None))
        emc = _get(getattr(j, "memory", None), "EMC")
        gpu_load = _num(_get(stats, "GPU"))
        emc_util = _num(_get(stats, "EMC"))
        gpu_freq_khz = _num(_get(gpu, "freq", "cur"))
        emc_freq_khz = _num(_get(emc, "cur"))
        return TelemetrySample(
            time_s=time.monotonic(),
            gpu_load_pct=gpu_load if gpu_load is not None else _num(_get(gpu, "status", "load")),
            emc_util_pct=emc_util if emc_util is not None else _num(_get(emc, "val")),
            gpu_freq_mhz=gpu_freq_khz / 1000.0 if gpu_freq_khz is not None else None,
            emc_freq_mhz=emc_freq_khz / 1000.0 if emc_freq_khz is not None else None,
            temps_c=self._temps(getattr(j, "temperature", None)),
            power_mw=_num(_get(getattr(j, "power", None), "tot", "power")),
            nvpmodel=self._nvpmodel(getattr(j, "nvpmodel", None)),
            jetson_clocks=self._jetson_clocks(getattr(j, "jetson_clocks", None)),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._abandon()

    def _abandon(self) -> None:
        """Let the client's threads end (jtop.close() joins them); never raises."""
        try:
            if self._jtop is not None:
                self._jtop.close()
        except Exception:   # the service may be gone, or start() never completed
            pass

    # --- mapping helpers -----------------------------------------------------------------

    @staticmethod
    def _first_gpu(gpus: Any) -> Any:
        """The first integrated GPU entry of j.gpu (keyed by device-tree name), else the first."""
        try:
            entries = list(gpus.values()) if hasattr(gpus, "values") else []
        except Exception:
            return None
        for entry in entries:
            if _get(entry, "type") == "integrated":
                return entry
        return entries[0] if entries else None

    @staticmethod
    def _temps(temperature: Any) -> dict[str, float]:
        temps: dict[str, float] = {}
        if not hasattr(temperature, "items"):
            return temps
        for name, value in temperature.items():
            if isinstance(value, dict):
                if value.get("online") is False:
                    continue
                value = value.get("temp")
            c = _num(value)
            if c is not None and c > SENSOR_OFF_C:
                temps[normalize_sensor(str(name))] = c
        return temps

    @staticmethod
    def _nvpmodel(nvpmodel: Any) -> str | None:
        if nvpmodel is None:
            return None
        name = getattr(nvpmodel, "name", None)
        if name is None and isinstance(nvpmodel, str):
            name = nvpmodel
        return str(name) if name else None

    @staticmethod
    def _jetson_clocks(jetson_clocks: Any) -> bool | None:
        if jetson_clocks is None:
            return None
        if isinstance(jetson_clocks, bool):
            return jetson_clocks
        status = getattr(jetson_clocks, "status", None)
        if isinstance(status, str):
            return status == "running"
        try:
            return bool(jetson_clocks)
        except Exception:
            return None
