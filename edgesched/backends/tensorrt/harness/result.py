"""What the CUDA harness found: plain data, written as JSON by `edgesched selftest --cuda`.

Units are in the names. `sm_fraction` = grid / (SMs x blocks per SM): the share of the
device's resident-block slots a probe fills (1.0 = one full wave). A `slowdown` is a probe's
time beside a load over its solo time at the same grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEMA = 1


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ProbeInfo:
    kind: str                  # compute | memory
    arch: str                  # sm_87 (CUBIN) or compute_87 (PTX)
    image: str                 # cubin | ptx: what cuModuleLoadData loaded
    ptx_bytes: int
    cubin_bytes: int
    compile_ms: float
    registers: int             # per thread
    block_threads: int
    blocks_per_sm: int         # occupancy calculator, at block_threads
    work: int                  # iterations (compute) or rounds (memory) giving target_ms solo


@dataclass(frozen=True)
class SoloRow:
    probe: str
    grid: int
    sm_fraction: float
    median_ms: float
    min_ms: float
    rate: float                # GFLOP/s (compute) or GB/s of DRAM traffic (memory)
    rate_unit: str


@dataclass(frozen=True)
class CorunCell:
    victim: str                # the probe timed
    victim_grid: int
    victim_sm_fraction: float
    load: str                  # the probe running beside it, on another stream
    load_grid: int
    load_sm_fraction: float
    solo_ms: float
    corun_ms: float            # median over the runs
    slowdown: float
    covered: bool              # every timed run started and ended inside the load's run


@dataclass(frozen=True)
class PriorityRow:
    victim: str
    grid: int
    sm_fraction: float
    load_grid: int             # a low-priority compute load of many short waves
    solo_ms: float
    high_ms: float             # victim on the high-priority stream beside the load
    low_ms: float              # victim on a second low-priority stream beside the load
    high_slowdown: float
    low_slowdown: float
    keeps_solo_time: bool      # high_slowdown within the harness's tolerance


@dataclass
class Report:
    device: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    probes: list[ProbeInfo] = field(default_factory=list)
    sm_clock_mhz: float | None = None    # measured from a clock64() spin, not the attribute
    solo: list[SoloRow] = field(default_factory=list)
    corun: list[CorunCell] = field(default_factory=list)
    priority: list[PriorityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "ok": self.ok, "device": self.device,
                "settings": self.settings, "sm_clock_mhz": self.sm_clock_mhz,
                "checks": [asdict(c) for c in self.checks],
                "probes": [asdict(p) for p in self.probes],
                "solo": [asdict(r) for r in self.solo],
                "corun": [asdict(c) for c in self.corun],
                "priority": [asdict(r) for r in self.priority]}
