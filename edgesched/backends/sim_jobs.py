"""The simulated GPU's running jobs and how they contend (sim.py's hot path).

A job is one launch (or calibration probe) in flight: its work (sim_device.SliceWork), its
noise, the fraction of it left. `contended` is the contention model: who runs beside whom
sets each job's duration. It depends only on the works running and which of them are on the
high-priority stream, so the simulator computes it once per distinct running set.
"""
from __future__ import annotations

import dataclasses

from edgesched.backends.sim_device import SliceWork
from edgesched.types import Completion, Launch

HIGH_PRIORITY_STREAM = 0
PRIORITY_LEAK = 0.2     # share of low-priority SM pressure still felt by high-priority work
CACHE_GAMMA = 0.4       # memory-time stretch per unit of others' bandwidth use (EMC/L2 term)


class Job:
    """One running launch (or probe): a fluid job. A plain class with slots, not a dataclass:
    one is made per launch."""

    __slots__ = ("launch", "work", "started_s", "scale", "remaining", "high", "sig")

    def __init__(self, launch: Launch | None, work: SliceWork, started_s: float,
                 scale: float, key: int = 0) -> None:
        """key: its key in the simulator's jobs (a launch's stream, a probe's id)."""
        self.launch = launch           # None for a probe
        self.work = work
        self.started_s = started_s
        self.scale = scale             # noise factor on this launch's solo time
        self.remaining = 1.0           # fraction of the job left
        # On the high-priority stream (probes never are).
        self.high = launch is not None and launch.stream == HIGH_PRIORITY_STREAM
        self.sig: tuple[int, int] = (key, id(work))   # what contention is cached by


def contended(jobs: list[Job], prioritized: bool
              ) -> tuple[list[float], tuple[float, float], list[SliceWork]]:
    """(each job's duration in seconds before noise and slow-downs, (SM busy, bandwidth)
    fractions for telemetry, the works: kept with the result so that their ids, in the
    simulator's cache key, are not reused). A job feels contention at its own phase peak (SM
    fill in its compute-bound kernels, bandwidth in its memory-bound ones) against the
    others' average use. Sums run in `jobs` order (floats: the order is part of the key)."""
    p_hi = p_lo = p_mem = 0.0
    for j in jobs:
        if prioritized and j.high:
            p_hi += j.work.sm
        else:
            p_lo += j.work.sm
        p_mem += j.work.mem
    busy = traffic = 0.0
    for j in jobs:
        busy += j.work.sm
        traffic += j.work.mem
    base = []
    # Blocks of high-priority streams are scheduled first; resident low-priority blocks
    # are not preempted, so some capacity always remains.
    left = 1.0 - (1.0 - PRIORITY_LEAK) * (p_hi if p_hi < 1.0 else 1.0)
    if left < 0.1:
        left = 0.1
    for job in jobs:
        w = job.work
        if prioritized and job.high:
            sm_stretch = w.sm_peak + (p_hi - w.sm + PRIORITY_LEAK * p_lo)
        else:
            sm_stretch = (w.sm_peak + p_lo - w.sm) / left
        if sm_stretch < 1.0:
            sm_stretch = 1.0
        others_mem = p_mem - w.mem
        mem_stretch = w.mem_peak + others_mem
        if mem_stretch < 1.0:
            mem_stretch = 1.0
        mem_stretch *= 1.0 + CACHE_GAMMA * others_mem
        base.append((w.launch_us + w.compute_us * sm_stretch + w.memory_us * mem_stretch) / 1e6)
    return base, (min(busy, 1.0), min(traffic, 1.0)), [j.work for j in jobs]


def fast_constructor(cls, *names: str):
    """cls(*values for names), the other fields at their defaults, without a frozen
    dataclass's object.__setattr__ per field (~0.1 us each): for values made once per
    simulated launch or request. The plain constructor where that shortcut would not give the
    same value (slots, __post_init__, a default factory, names not the leading fields)."""
    fields = dataclasses.fields(cls)
    defaults = {f.name: f.default for f in fields if f.name not in names}
    if (hasattr(cls, "__slots__") or hasattr(cls, "__post_init__")
            or {f.name for f in fields[:len(names)]} != set(names)
            or dataclasses.MISSING in defaults.values()):
        return cls
    new = object.__new__
    if len(names) == 3:           # the two in use: item assignments beat update(zip(...))
        first, second, third = names

        def make3(a, b, c):
            made = new(cls)
            state = made.__dict__
            state.update(defaults)
            state[first] = a
            state[second] = b
            state[third] = c
            return made
        return make3

    def make(*values):
        made = new(cls)
        state = made.__dict__
        state.update(defaults)
        state.update(zip(names, values))
        return made
    return make


completion = fast_constructor(Completion, "launch", "started_s", "finished_s")
