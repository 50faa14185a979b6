"""Interference predictor: each co-running slice's slowdown from the demands of all of them.

Form "sm-mem-cache/1": with P_sm, P_mem the sums of sm and mem (fractions 0..1) over every
co-runner, slice i runs

    slowdown_i = 1 + a * cf_i      * max(0, P_sm - 1)     SM oversubscription
                   + b * mem_i       * max(0, P_mem - 1)    DRAM/EMC bandwidth oversubscription
                   + c * mem_i       * (P_mem - mem_i)      cache/EMC contention below saturation

times slower than alone, with a, b, c >= 0. Why this shape:
- Work that fits in the SMs (P_sm <= 1) or in the bandwidth (P_mem <= 1) shares it for free;
  past capacity the device time-slices, so the excess is what slows everyone down.
- SM excess hurts in proportion to the share of a slice's time spent in compute-bound
  kernels, cf_i (measured by probes; 1 - mem_i when unmeasured: launch gaps and memory-bound
  kernels do not stretch when SMs are scarce); bandwidth
  excess in proportion to how memory-bound it is (mem_i). So a compute-bound slice beside a
  memory-bound one barely slows: the overlap the scheduler is looking for.
- Below saturation, others' traffic still evicts my L2 lines and queues at the EMC; that
  costs a memory-bound slice in proportion to the others' traffic (P_mem - mem_i).
- Alone, every term is 0: exactly 1.0. Every term grows with each co-runner's sm and mem, so
  adding a co-runner never lowers anyone's prediction (the scheduler relies on this).
Linear in (a, b, c), so calibration co-runs fit them by non-negative least squares (a negative
coefficient would mean contention speeds work up). `slowdowns` is on the scheduler's hot
path: plain Python floats, ~1-2 us per call; numpy only in `fit`.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgesched.types import CoRun, SliceDemand

FORM = "sm-mem-cache/1"
_NAMES = ("a", "b", "c")


@dataclass(frozen=True)
class Predictor:
    # Defaults, the uncalibrated guess: past capacity the work is time-sliced, below it free.
    a: float = 1.0   # SM oversubscription
    b: float = 1.0   # DRAM bandwidth oversubscription
    c: float = 0.0   # cache/EMC contention below saturation

    def __post_init__(self) -> None:
        for name, value in zip(_NAMES, (self.a, self.b, self.c)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"predictor: {name}={value!r} must be finite and >= 0")

    def slowdowns(self, demands: Sequence[SliceDemand]) -> list[float]:
        """Each slice's predicted co-run time / solo time, in the order given; each >= 1."""
        if len(demands) < 2:
            return [1.0] * len(demands)
        a, b, c = self.a, self.b, self.c
        p_sm = p_mem = 0.0
        for d in demands:
            p_sm += d.sm
            p_mem += d.mem
        # A few float ops per slice: with ka = a over_sm and kb = b over_mem + c P_mem,
        # slice i gets 1 + ka cf_i + m_i (kb - c m_i).
        ka = a * (p_sm - 1.0) if p_sm > 1.0 else 0.0
        kb = b * (p_mem - 1.0 if p_mem > 1.0 else 0.0) + c * p_mem
        # The clamp only bites for demands outside 0..1 (a bad profile) or by an ulp:
        # a prediction must never promise a speed-up.
        return [s if (s := 1.0 + ka * d.compute_share + d.mem * (kb - c * d.mem)) > 1.0 else 1.0
                for d in demands]

    def slowdown(self, i: int, demands: Sequence[SliceDemand]) -> float:
        """Slice i's predicted slowdown among `demands` (which include slice i itself)."""
        fa, fb, fc = self.features(i, demands)
        s = 1.0 + self.a * fa + self.b * fb + self.c * fc
        return s if s > 1.0 else 1.0

    def features(self, i: int, demands: Sequence[SliceDemand]) -> tuple[float, float, float]:
        """The multipliers of a, b and c for slice i: fit and predict share this definition."""
        if len(demands) < 2:
            return (0.0, 0.0, 0.0)
        p_sm = p_mem = 0.0
        for d in demands:
            p_sm += d.sm
            p_mem += d.mem
        m = demands[i].mem
        return (demands[i].compute_share * max(0.0, p_sm - 1.0), m * max(0.0, p_mem - 1.0),
                m * (p_mem - m))

    def to_json(self) -> dict:
        return {"form": FORM, "a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_json(cls, d: object) -> Predictor:
        if not isinstance(d, dict):
            raise ValueError(f"predictor: expected a JSON object, got {type(d).__name__}")
        if d.get("form") != FORM:
            raise ValueError(f"predictor: form {d.get('form')!r} is not {FORM!r}")
        for name in _NAMES:  # bool is an int subclass, but true/false here is a mistake
            if isinstance(d.get(name), bool) or not isinstance(d.get(name), (int, float)):
                raise ValueError(f"predictor: {name!r} must be a number, got {d.get(name)!r}")
        return cls(*(float(d[name]) for name in _NAMES))


def _design(samples: Sequence[CoRun]) -> tuple[np.ndarray, np.ndarray]:
    """Rows (features, slowdown - 1) / measured slowdown, one per usable (sample, slice): the
    division makes least squares minimise relative error, as `mape` reports and as timing
    noise behaves (multiplicative)."""
    shape = Predictor()
    rows, targets = [], []
    for k, sample in enumerate(samples):
        if len(sample.demands) != len(sample.slowdowns):
            raise ValueError(f"co-run {k}: {len(sample.demands)} demands but "
                             f"{len(sample.slowdowns)} slowdowns")
        for i, y in enumerate(sample.slowdowns):
            if not (math.isfinite(y) and y > 0.0):
                continue  # a failed measurement: no information
            rows.append([f / y for f in shape.features(i, sample.demands)])
            targets.append((y - 1.0) / y)
    return np.array(rows, dtype=float).reshape(-1, 3), np.array(targets, dtype=float)


def fit(samples: Sequence[CoRun]) -> Predictor:
    """Non-negative least squares for (a, b, c) over every (sample, slice) row. Exact NNLS for
    three unknowns: least squares on every subset of them, the best all->=0 answer wins.
    A term no row exercises (say no co-run oversubscribed the SMs) keeps its default rather
    than 0, so the scheduler does not learn that untested contention is free."""
    x, y = _design(samples)
    seen = [j for j in range(3) if np.any(x[:, j] != 0.0)]
    if not seen:
        raise ValueError("fit: no co-run rows with any contention (need >= 2 slices sharing "
                         "SMs or bandwidth, with finite positive slowdowns)")
    best, best_sse = np.zeros(3), float(y @ y)
    for r in range(1, len(seen) + 1):
        for subset in itertools.combinations(seen, r):
            cols = list(subset)
            beta, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            resid = y - x[:, cols] @ beta
            if np.all(beta >= 0.0) and float(resid @ resid) < best_sse:
                best_sse, best = float(resid @ resid), np.zeros(3)
                best[cols] = beta
    default = Predictor()
    return Predictor(*(float(best[j]) if j in seen else getattr(default, name)
                       for j, name in enumerate(_NAMES)))


def mape(predictor: Predictor, samples: Sequence[CoRun]) -> float:
    """Mean |predicted - measured| / measured over every slice of every sample (0.05 = 5%)."""
    errors = []
    for sample in samples:
        for pred, y in zip(predictor.slowdowns(sample.demands), sample.slowdowns):
            if math.isfinite(y) and y > 0.0:
                errors.append(abs(pred - y) / y)
    if not errors:
        raise ValueError("mape: no measured slowdowns to compare with")
    return sum(errors) / len(errors)


def holdout_split(samples: Sequence[CoRun], fraction: float = 0.25,
                  seed: int = 0) -> tuple[list[CoRun], list[CoRun]]:
    """Deterministic shuffle into (fit, held_out); held_out has round(fraction * n) samples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction!r} must be between 0 and 1")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_held = round(fraction * len(order))
    return [samples[k] for k in order[n_held:]], [samples[k] for k in order[:n_held]]


def fit_and_validate(samples: Sequence[CoRun], fraction: float = 0.25,
                     seed: int = 0) -> tuple[Predictor, float]:
    """Fit on the fit part; return the predictor and its MAPE on the held-out co-runs."""
    fit_part, held_out = holdout_split(samples, fraction, seed)
    if not held_out:
        raise ValueError(f"fit_and_validate: {len(samples)} co-runs leave none to hold out")
    predictor = fit(fit_part)
    return predictor, mape(predictor, held_out)
