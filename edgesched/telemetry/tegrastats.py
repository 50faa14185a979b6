"""Parse `tegrastats` lines, and a reader that runs the tool and keeps its latest line.

Formats handled (tests/fixtures/tegrastats/ has one file per family):
- `GR3D_FREQ X%@Y` (JetPack 4; listed for JP6 too, though the JP6 lines in public captures
  use the bracket form), `GR3D_FREQ X%@[a,b]` (JP5/JP6/JP7: one load aggregated over the
  GPCs, one clock per GPC -- gpu_freq_mhz is the highest),
  `GR3D_FREQ X%` (no clock: tegrastats run without root), `GR3D_FREQ @[a,b,c]` (Thor run as
  root: clocks, no load), and no GR3D_FREQ at all (Thor without root). `GR3D2_FREQ` (a second
  GPC printed separately on early Orin NX builds) is ignored.
- `EMC_FREQ X%@Y` (X = % of the bandwidth available at the current EMC clock Y MHz),
  `EMC_FREQ X%`, `EMC_FREQ @Y`, or absent.
- Temperatures `name@45.5C` (JP7 may append `/max`); -256 C means "sensor off" and is dropped.
  Keys go through sample.normalize_sensor, so JP5's `CPU@` and JP6's `cpu@` are both "cpu".
- Power rails `NAME cur mW/avg mW[/max mW]` (values may be negative: Thor's VDD_GPU reads a
  small negative offset at idle) and JetPack 4's unit-less `NAME cur/avg`. power_mw is the
  instant (first) value of the total rail, see sample.total_power_mw.
A line with none of RAM, CPU, GR3D_FREQ, EMC_FREQ, a temperature or a rail, or with a
GR3D_FREQ/EMC_FREQ value that does not parse, raises ValueError with a one-line message.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from typing import Sequence

from edgesched.errors import TelemetryUnavailable
from edgesched.telemetry.sample import TelemetrySample, normalize_sensor, total_power_mw

DEFAULT_COMMAND = ("tegrastats", "--interval", "100")
SENSOR_OFF_C = -100.0

_RAM_RE = re.compile(r"\bRAM \d+/\d+[kMG]B")
_CPU_RE = re.compile(r"\bCPU \[")
_GR3D_RE = re.compile(r"\bGR3D_FREQ +(\S+)")
_EMC_RE = re.compile(r"\bEMC_FREQ +(\S+)")
# "12%@1300", "12%@[1300,1300]", "12%", "@[314,314,314]", "@1300"
_LOAD_AT_FREQ_RE = re.compile(r"(?:(\d+(?:\.\d+)?)%)?(?:@(?:(\d+)|\[(\d+(?:,\d+)*)\]))?")
_TEMP_RE = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?![\w])")
_RAIL_MW_RE = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*) (-?\d+)mW(?:/-?\d+mW)*(?!\S)")
_RAIL_LEGACY_RE = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*) (-?\d+)/-?\d+(?!\S)")


def _load_and_freq(key: str, value: str) -> tuple[float | None, float | None]:
    """(load %, clock MHz) from a GR3D_FREQ/EMC_FREQ value; ValueError when malformed."""
    if value == "off":                       # engine power-gated: idle, no clock to report
        return 0.0, None
    match = _LOAD_AT_FREQ_RE.fullmatch(value)
    if not match or not any(match.groups()):
        raise ValueError(f"malformed tegrastats {key} value {value!r}")
    load, freq, per_gpc = match.groups()
    if per_gpc is not None:
        freq = max(int(f) for f in per_gpc.split(","))
    return (float(load) if load is not None else None,
            float(freq) if freq is not None else None)


def parse_line(line: str, time_s: float | None = None) -> TelemetrySample:
    """One tegrastats line -> TelemetrySample (time_s defaults to time.monotonic())."""
    text = line.strip()
    gpu_load = gpu_freq = emc_util = emc_freq = None
    gr3d = _GR3D_RE.search(text)
    if gr3d:
        gpu_load, gpu_freq = _load_and_freq("GR3D_FREQ", gr3d[1])
    emc = _EMC_RE.search(text)
    if emc:
        emc_util, emc_freq = _load_and_freq("EMC_FREQ", emc[1])
    temps = {normalize_sensor(name): float(c) for name, c in _TEMP_RE.findall(text)
             if float(c) > SENSOR_OFF_C}
    rails = {name: float(mw) for name, mw in _RAIL_MW_RE.findall(text)}
    if not rails:
        rails = {name: float(mw) for name, mw in _RAIL_LEGACY_RE.findall(text)}
    recognized = (gr3d or emc or temps or rails or _RAM_RE.search(text) or _CPU_RE.search(text))
    if not recognized:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"not a tegrastats line: {shown!r}")
    return TelemetrySample(
        time_s=time.monotonic() if time_s is None else time_s,
        gpu_load_pct=gpu_load, emc_util_pct=emc_util,
        gpu_freq_mhz=gpu_freq, emc_freq_mhz=emc_freq,
        temps_c=temps, power_mw=total_power_mw(rails),
    )


class TegrastatsReader:
    """Runs `command` (tegrastats printing a line per interval) and parses its latest line.

    A thread reads the tool's stdout so read() never blocks on the pipe; read() returns the
    newest line parsed (the same sample again if no new line came since), waits up to
    `first_line_timeout_s` for the first one, and raises TelemetryUnavailable once the tool
    has exited. Without root tegrastats prints fewer fields (no GR3D/EMC clocks on some
    releases): those come back None.
    """

    name = "tegrastats"

    def __init__(self, command: Sequence[str] = DEFAULT_COMMAND,
                 first_line_timeout_s: float = 5.0):
        self.command = tuple(command)
        # For messages: the program itself, past a wrapper such as `stdbuf -oL`.
        self._label = os.path.basename(next(
            (arg for arg in self.command if arg != "stdbuf" and not arg.startswith("-")),
            self.command[0]))
        self.first_line_timeout_s = first_line_timeout_s
        self.bad_lines = 0
        self._latest: TelemetrySample | ValueError | None = None
        self._lock = threading.Lock()
        self._got_line = threading.Event()    # set by the first line, or by end of output
        self._ended = False
        try:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                          text=True, bufsize=1)
        except OSError as e:
            raise TelemetryUnavailable(
                f"cannot run {self.command[0]!r}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._pump, name="tegrastats-reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                item: TelemetrySample | ValueError = parse_line(line, time_s=time.monotonic())
            except ValueError as e:
                item = e
                self.bad_lines += 1
            with self._lock:
                self._latest = item
            self._got_line.set()
        self._ended = True
        self._got_line.set()

    def read(self) -> TelemetrySample:
        if not self._got_line.wait(self.first_line_timeout_s):
            raise TelemetryUnavailable(
                f"{self._label} printed nothing in {self.first_line_timeout_s:g} s")
        if self._ended:
            try:
                code = self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
            raise TelemetryUnavailable(f"{self._label} stopped (exit status {code})")
        with self._lock:
            item = self._latest
        if isinstance(item, ValueError):
            raise ValueError(str(item))
        assert item is not None
        return item

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._thread.join(timeout=2.0)
        # Closing the pipe while the pump thread still reads it would block on its lock; that
        # only happens if a grandchild keeps the pipe open, and then the daemon thread stays.
        if not self._thread.is_alive() and self._proc.stdout is not None:
            self._proc.stdout.close()
