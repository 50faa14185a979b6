"""The profile: measured per-slice demands on one device, plus the fitted predictor.

Produced by profiling/calibration through the Backend interface, read by the scheduler.
Profiles are data: a versioned JSON file next to the engines.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgesched.sched.predictor import Predictor
from edgesched.types import SliceDemand

PROFILE_VERSION = 1


@dataclass(frozen=True)
class Profile:
    device: str
    demands: dict[str, tuple[SliceDemand, ...]]     # model -> one entry per slice
    predictor: Predictor = field(default_factory=Predictor)
    meta: dict = field(default_factory=dict)         # clocks, power mode, versions, errors
    # model -> rows (its inputs' dim 0) -> solo microseconds of each slice at that batch size,
    # for models with a batch range (calibrate; sched/batching.py sizes batches by it)
    batch_us: dict[str, dict[int, tuple[float, ...]]] = field(default_factory=dict)

    def demand(self, model: str, index: int) -> SliceDemand | None:
        slices = self.demands.get(model)
        return slices[index] if slices is not None and index < len(slices) else None

    def batch_seconds(self) -> dict[str, dict[int, float]]:
        """model -> rows -> solo seconds of the whole model (all slices) at that batch size."""
        return {m: {rows: sum(us) / 1e6 for rows, us in table.items()}
                for m, table in self.batch_us.items()}

    def to_json(self) -> dict:
        return {"version": PROFILE_VERSION, "device": self.device,
                "predictor": self.predictor.to_json(), "meta": self.meta,
                "models": {m: [{"sm": d.sm, "mem": d.mem, "duration_us": d.duration_us,
                                "compute_frac": d.compute_frac}
                               for d in ds] for m, ds in self.demands.items()},
                **({"batch_us": {m: {str(rows): list(us) for rows, us in sorted(t.items())}
                                 for m, t in self.batch_us.items()}} if self.batch_us else {})}

    @classmethod
    def from_json(cls, raw: dict) -> "Profile":
        if not isinstance(raw, dict) or raw.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {raw.get('version') if isinstance(raw, dict) else None!r}"
                             f" is not {PROFILE_VERSION}")
        try:
            demands = {m: tuple(_demand(d, f"{m}[{i}]") for i, d in enumerate(ds))
                       for m, ds in raw["models"].items()}
            batch_us = {m: {_rows(k, m): tuple(_time(u, f"batch_us.{m}.{k}") for u in us)
                            for k, us in t.items()}
                        for m, t in raw.get("batch_us", {}).items()}
            return cls(str(raw["device"]), demands, Predictor.from_json(raw["predictor"]),
                       dict(raw.get("meta", {})), batch_us)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"profile is missing or mistypes a field: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        return cls.from_json(json.loads(Path(path).read_text()))


def _rows(key: str, model: str) -> int:
    if not (isinstance(key, str) and key.isdigit() and int(key) >= 1):
        raise ValueError(f"profile: batch_us.{model}: {key!r} is not a number of rows")
    return int(key)


def _time(value, where: str) -> float:
    us = float(value)
    if not (math.isfinite(us) and us > 0):
        raise ValueError(f"profile: {where} = {us} is not a positive time")
    return us


def _demand(d: dict, where: str) -> SliceDemand:
    """One profile entry, refusing values no measurement can produce (a NaN duration would
    make every deadline comparison false)."""
    def fraction(key: str) -> float:
        value = float(d[key])
        if not 0.0 <= value <= 1.0:        # also false for NaN
            raise ValueError(f"profile: {where}.{key} = {value} is not a fraction 0..1")
        return value
    duration = float(d["duration_us"])
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"profile: {where}.duration_us = {duration} is not a positive time")
    return SliceDemand(fraction("sm"), fraction("mem"), duration,
                       None if d.get("compute_frac") is None else fraction("compute_frac"))
