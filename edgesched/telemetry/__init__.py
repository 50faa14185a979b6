"""Device telemetry: readers (jtop, sysfs, tegrastats, NVML) -> TelemetrySample, a Sampler,
and the /proc/stat CPU reader (procstat.py).

`open_reader(config.telemetry)` picks the source. jtop.py and nvml.py import their libraries
inside the reader constructors, so importing this package needs neither.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

from edgesched.errors import TelemetryUnavailable
from edgesched.telemetry.sample import Reader, TelemetrySample
from edgesched.telemetry.sampler import Sampler
from edgesched.types import TelemetrySource

log = logging.getLogger(__name__)

__all__ = ["OPENERS", "AUTO_ORDER", "Reader", "Sampler", "TelemetrySample",
           "TelemetryUnavailable", "open_reader"]


def _open_jtop(root: Path) -> Reader:
    from edgesched.telemetry.jtop import JtopReader
    return JtopReader()


def _open_sysfs(root: Path) -> Reader:
    from edgesched.telemetry.sysfs import SysfsReader
    if not SysfsReader.available(root):
        raise TelemetryUnavailable(f"no Jetson GPU load file under {root} "
                                   "(sys/class/devfreq/*/device/load or sys/devices/*gpu*/load)")
    return SysfsReader(root)


def _open_tegrastats(root: Path) -> Reader:
    from edgesched.telemetry.tegrastats import DEFAULT_COMMAND, TegrastatsReader
    if shutil.which(DEFAULT_COMMAND[0]) is None:
        raise TelemetryUnavailable(
            f"{DEFAULT_COMMAND[0]} is not on PATH (it ships with Jetson Linux)")
    # Line-buffer its stdout if coreutils' stdbuf is there: a C program writing to a pipe may
    # otherwise hold several lines in its buffer, and each sample's time would lag.
    prefix = ("stdbuf", "-oL") if shutil.which("stdbuf") else ()
    return TegrastatsReader(prefix + DEFAULT_COMMAND)


def _open_nvml(root: Path) -> Reader:
    from edgesched.telemetry.nvml import NvmlReader
    return NvmlReader()


# How each explicit source is opened; each raises TelemetryUnavailable when it cannot be.
# A dict so tests (and a future source) can replace an entry.
OPENERS: dict[TelemetrySource, Callable[[Path], Reader]] = {
    TelemetrySource.JTOP: _open_jtop,
    TelemetrySource.SYSFS: _open_sysfs,
    TelemetrySource.TEGRASTATS: _open_tegrastats,
    TelemetrySource.NVML: _open_nvml,
}
# `auto`: the richest source first (jtop reads debugfs as root), NVML last (dGPU / Thor).
AUTO_ORDER = (TelemetrySource.JTOP, TelemetrySource.SYSFS, TelemetrySource.TEGRASTATS,
              TelemetrySource.NVML)


def open_reader(source: str | TelemetrySource, root: Path = Path("/")) -> Reader | None:
    """The reader for a config's `telemetry` value.

    `none` -> None. An explicit source raises TelemetryUnavailable with one line when it cannot
    be used. `auto` tries jtop, sysfs (if a GPU load file exists under `root`), tegrastats
    (if on PATH) and NVML in that order, and returns None, logging one line, if none works.
    """
    try:
        wanted = TelemetrySource(source)
    except ValueError:
        choices = "|".join(s.value for s in TelemetrySource)
        raise TelemetryUnavailable(
            f"unknown telemetry source {source!r} (expected {choices})") from None
    root = Path(root)
    if wanted is TelemetrySource.NONE:
        return None
    if wanted is not TelemetrySource.AUTO:
        return OPENERS[wanted](root)
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            reader = OPENERS[candidate](root)
        except TelemetryUnavailable as e:
            reasons.append(f"{candidate.value}: {e}")
            continue
        log.debug("telemetry: using %s", reader.name)
        return reader
    log.info("no telemetry source available (%s)", "; ".join(reasons))
    return None
