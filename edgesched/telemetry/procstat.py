"""The CPU busy fraction from /proc/stat: the CPU backend's counterpart of a Jetson's GPU load.

Readers take a filesystem root (tests point it at fixture trees), like the sysfs readers.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

MIN_TICKS_PER_CORE = 40               # /proc/stat windows shorter than this are too coarse


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class CpuTimes(NamedTuple):
    """Cumulative CPU time of all cores (clock ticks, USER_HZ: usually 100 a second): busy,
    total, and how many per-core lines the file had."""

    busy: int
    total: int
    cores: int = 1


def parse_proc_stat(text: str) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat. Busy = user + nice + system + irq + softirq;
    total adds idle, iowait and steal (time the hypervisor gave to someone else). guest and
    guest_nice are already inside user and nice, so they are not added again."""
    cores = sum(1 for line in text.splitlines()
                if line.startswith("cpu") and line[3:4].isdigit())
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                ticks = [int(v) for v in fields[1:]]
            except ValueError:
                raise ValueError(f"/proc/stat: unreadable cpu line {line!r}") from None
            if len(ticks) < 4:
                raise ValueError(f"/proc/stat: cpu line has {len(ticks)} fields, expected >= 4")
            ticks += [0] * (8 - len(ticks))
            user, nice, system, idle, iowait, irq, softirq, steal = ticks[:8]
            busy = user + nice + system + irq + softirq
            return CpuTimes(busy, busy + idle + iowait + steal, max(cores, 1))
    raise ValueError("/proc/stat: no aggregate 'cpu' line")


def read_cpu_times(root: str | os.PathLike = "/") -> CpuTimes | None:
    """CPU times from <root>/proc/stat; None where there is no such file (not Linux)."""
    try:
        text = (Path(root) / "proc" / "stat").read_text()
    except OSError:
        return None
    try:
        return parse_proc_stat(text)
    except ValueError:
        return None


def busy_fraction(before: CpuTimes | None, after: CpuTimes | None) -> float:
    """Fraction of all cores' time that was busy between two readings (0 when unknown)."""
    if before is None or after is None:
        return 0.0
    total = after.total - before.total
    if total <= 0:
        return 0.0
    return min(max((after.busy - before.busy) / total, 0.0), 1.0)


def resolves(before: CpuTimes | None, after: CpuTimes | None) -> bool:
    """Whether the window between two readings is long enough for /proc/stat: every core's
    counters are whole ticks (10 ms at USER_HZ 100), so a window of T ticks in all can be off
    by about cores/T; at MIN_TICKS_PER_CORE ticks per core that is within 2.5 %."""
    return (before is not None and after is not None
            and after.total - before.total >= MIN_TICKS_PER_CORE * max(after.cores, 1))


class BusyWindow:
    """CPU busy fraction over all cores between successive `read()` calls.

    System-wide from <root>/proc/stat when the window spans enough clock ticks to mean
    something (`resolves`); a shorter window (a calibration's solo runs of a sub-millisecond
    slice last a few ms, under one tick) instead uses this process's own CPU time, which the
    kernel keeps in nanoseconds, over wall time times the core count. That fallback does not
    see other processes, which in a short window is the better error to make."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = root
        self._cpu = read_cpu_times(root)
        self._own, self._wall = time.process_time(), time.monotonic()

    def read(self) -> float:
        cpu = read_cpu_times(self.root)
        own, wall = time.process_time(), time.monotonic()
        if resolves(self._cpu, cpu):
            busy = busy_fraction(self._cpu, cpu)
        else:
            cores = cpu.cores if cpu is not None else cpu_count()
            span = wall - self._wall
            busy = min(max((own - self._own) / (span * cores), 0.0), 1.0) if span > 0 else 0.0
        self._cpu, self._own, self._wall = cpu, own, wall
        return busy
