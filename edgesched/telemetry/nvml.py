"""Telemetry through NVML (`pynvml`, from the nvidia-ml-py package), imported lazily.

For a discrete GPU, or a Jetson whose driver ships NVML (Thor, JetPack 7). Mapping:
- gpu_load_pct  <- nvmlDeviceGetUtilizationRates().gpu (% of time a kernel ran)
- emc_util_pct  <- nvmlDeviceGetUtilizationRates().memory: % of time device memory was read
                   or written -- the nearest NVML analogue of EMC utilization, not the same
                   measure (a time share, not a bandwidth share)
- gpu_freq_mhz  <- nvmlDeviceGetClockInfo(NVML_CLOCK_GRAPHICS); emc_freq_mhz <- NVML_CLOCK_MEM
- temps_c       <- {"gpu": nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)}
- power_mw      <- nvmlDeviceGetPowerUsage() (mW, the GPU board only)
A query the device does not support (NVMLError "Not Supported") gives a None field.
nvpmodel and jetson_clocks are not NVML concepts: always None.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from edgesched.errors import TelemetryUnavailable
from edgesched.telemetry.sample import TelemetrySample

# NVML's enum values, used when the module lacks the named constants.
_NVML_CLOCK_GRAPHICS = 0
_NVML_CLOCK_MEM = 2
_NVML_TEMPERATURE_GPU = 0


class NvmlReader:
    name = "nvml"

    def __init__(self, index: int = 0):
        try:
            import pynvml  # nvidia-ml-py; needs the NVIDIA driver's libnvidia-ml at init
        except ImportError:
            raise TelemetryUnavailable(
                "pynvml is not installed (pip install nvidia-ml-py)") from None
        self._nvml = pynvml
        self._error: type[BaseException] = getattr(pynvml, "NVMLError", Exception)
        try:
            pynvml.nvmlInit()
        except self._error as e:
            raise TelemetryUnavailable(f"NVML is not usable here ({e}): no NVIDIA driver") from None
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except self._error as e:
            pynvml.nvmlShutdown()
            raise TelemetryUnavailable(f"NVML has no GPU at index {index} ({e})") from None
        self._closed = False

    def _query(self, function: str, *args: Any) -> Any:
        call: Callable[..., Any] | None = getattr(self._nvml, function, None)
        if call is None:
            return None
        try:
            return call(self._handle, *args)
        except self._error:
            return None

    def read(self) -> TelemetrySample:
        if self._closed:
            raise TelemetryUnavailable("NVML reader is closed")
        nvml = self._nvml
        util = self._query("nvmlDeviceGetUtilizationRates")
        graphics = self._query("nvmlDeviceGetClockInfo",
                               getattr(nvml, "NVML_CLOCK_GRAPHICS", _NVML_CLOCK_GRAPHICS))
        memory = self._query("nvmlDeviceGetClockInfo",
                             getattr(nvml, "NVML_CLOCK_MEM", _NVML_CLOCK_MEM))
        temp = self._query("nvmlDeviceGetTemperature",
                           getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU))
        power = self._query("nvmlDeviceGetPowerUsage")
        return TelemetrySample(
            time_s=time.monotonic(),
            gpu_load_pct=_float(getattr(util, "gpu", None)),
            emc_util_pct=_float(getattr(util, "memory", None)),
            gpu_freq_mhz=_float(graphics),
            emc_freq_mhz=_float(memory),
            temps_c={"gpu": float(temp)} if _float(temp) is not None else {},
            power_mw=_float(power),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except self._error:
                pass


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
