"""Workload files for `edgesched simulate` and benchmarks: which models arrive how, on which device.

A workload names a simulated Jetson, a duration and a seed, and per model the ONNX file, how
many slices to cut it into, its SLO and priority, `shapes:` for its dynamic inputs (as in the
server config; edgesched.shapes), and an arrival process:
periodic (a camera at `fps`, optional `phase_ms` offset and `jitter_ms` delay), poisson
(`rate_rps` on average) or closed (`concurrency` requests always in flight, each re-submitted
when it completes). Validation follows config.py and reuses its checks: every mistake is one
ConfigError line naming the file and the key path (`models[1].arrival.fps`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Private helpers of config.py, imported so both files check values and word errors the same way.
from edgesched.config import (
    _ABSENT,
    SIM_DEVICES,
    _Checks,
    _fields,
    _got,
    _integer,
    _Invalid,
    _name,
    _one_of,
    _positive,
    _resolve,
    _shapes,
    _Text,
    check_batch,
    read_yaml,
)
from edgesched.errors import ConfigError
from edgesched.shapes import ShapeRange
from edgesched.types import BatchConfig, Priority

ARRIVAL_KINDS = ("periodic", "poisson", "closed")
MAX_SLICES = 16
AUTO = "auto"
AUTO_SHARE = 0.5     # an auto slice fits in this share of the tightest realtime slack
AUTO_MIN_SLICES = 4    # see auto_slices; realtime models get exactly this many


@dataclass(frozen=True)
class Arrival:
    """How requests for one model arrive. Only the fields of `kind` are set; the others are None."""

    kind: str                         # one of ARRIVAL_KINDS
    fps: float | None = None          # periodic: arrivals per second
    rate_rps: float | None = None     # poisson: mean arrivals per second
    concurrency: int | None = None    # closed: requests in flight, re-submitted on completion
    phase_ms: float = 0.0             # periodic: time of the first arrival
    jitter_ms: float = 0.0            # periodic: each arrival is late by uniform [0, jitter_ms)
    sources: int = 1                  # periodic: independent cameras at `fps` each, all at
    #                                   `phase_ms`, each frame late by its own jitter


@dataclass(frozen=True)
class WorkloadModel:
    name: str
    path: Path                        # absolute; an existing .onnx file
    slices: int | str                 # 1..MAX_SLICES, cut by edgesched.modelfiles.slicing, or
    #                                   AUTO: sized to the realtime slack (auto_slices)
    slo_ms: float
    priority: Priority
    arrival: Arrival
    instances: int = 1                # concurrent requests one slice may run at once
    # input -> fixed shape or range (edgesched.shapes): required for each dynamic input,
    # the model is sliced and costed at opt
    shapes: dict[str, ShapeRange] = dataclasses.field(default_factory=dict, hash=False)
    batch: BatchConfig | None = None  # as in the server config (check_batch); None: off


@dataclass(frozen=True)
class Workload:
    device: str                       # one of config.SIM_DEVICES
    duration_s: float                 # simulated seconds, > 0
    seed: int                         # seeds every random draw of a run (arrivals, noise)
    models: tuple[WorkloadModel, ...]
    source: str                       # the file it came from, for messages


# --- schemas: which keys each arrival kind takes (required = no default) -------------------

@dataclass(frozen=True)
class _Periodic:
    kind: str
    fps: float
    phase_ms: float = 0.0
    jitter_ms: float = 0.0
    sources: int = 1


@dataclass(frozen=True)
class _Poisson:
    kind: str
    rate_rps: float


@dataclass(frozen=True)
class _Closed:
    kind: str
    concurrency: int


def _non_negative(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _Invalid("a finite number >= 0", v)
    return float(v)


_KIND = _one_of(ARRIVAL_KINDS)
_ARRIVALS: dict[str, tuple[type, _Checks]] = {
    "periodic": (_Periodic, {"kind": _KIND, "fps": _positive, "phase_ms": _non_negative,
                             "jitter_ms": _non_negative, "sources": _integer(1, 64)}),
    "poisson": (_Poisson, {"kind": _KIND, "rate_rps": _positive}),
    "closed": (_Closed, {"kind": _KIND, "concurrency": _integer(1, 64)}),
}


def _fail(source: str, key: str, e: _Invalid) -> ConfigError:
    return ConfigError(source, key, e.args[0], _got(e.args[1]))


def _arrival(source: str, prefix: str, data: Any) -> Arrival:
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix, "a mapping with a key kind: "
                          + " | ".join(ARRIVAL_KINDS), _got(data))
    try:
        kind = _KIND(data.get("kind", _ABSENT))
    except _Invalid as e:
        raise _fail(source, f"{prefix}.kind", e) from None
    schema, checks = _ARRIVALS[kind]
    for key in data:  # a key of another kind (rate_rps on a periodic arrival): say so
        owner = next((k for k, (_, c) in _ARRIVALS.items() if key in c and key not in checks), None)
        if owner:
            raise ConfigError(source, f"{prefix}.{key}",
                              f"only the keys of a {kind} arrival: {', '.join(checks)}",
                              _Text(f"{key!r}, which belongs to {owner} arrivals"))
    arrival = Arrival(**_fields(source, prefix, data, schema, checks))
    if arrival.fps is not None and arrival.jitter_ms >= 1000.0 / arrival.fps:
        # Within one period, arrivals keep their order: the simulator may rely on it.
        period = 1000.0 / arrival.fps
        raise ConfigError(source, f"{prefix}.jitter_ms",
                          f"less than the period 1000 / fps = {period:.4g} ms", arrival.jitter_ms)
    return arrival


def _onnx_path(v: Any, base_dir: Path) -> Path:
    path = _resolve(v, base_dir)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return path
    why = ("a directory" if path.is_dir() else "a file of another kind" if path.exists()
           else "which does not exist")
    where = f"{v!r}" if str(path) == v else f"{v!r} (resolved to {str(path)!r})"
    # The simulator costs the ONNX graph itself: engines and sliced directories will not do.
    raise _Invalid("an existing .onnx file", _Text(f"{where}, {why}"))


def _slices(v: Any) -> int | str:
    if v == AUTO:
        return AUTO
    try:
        return _integer(1, MAX_SLICES)(v)
    except _Invalid as e:
        raise _Invalid(f"{e.args[0]} or {AUTO!r}", v) from None


def _models(source: str, data: Any, base_dir: Path) -> tuple[WorkloadModel, ...]:
    if not isinstance(data, (list, tuple)) or not data:
        raise _Invalid("a list of at least one model", data)
    models: list[WorkloadModel] = []
    for i, entry in enumerate(data):
        prefix = f"models[{i}]"
        checks: _Checks = {
            "name": _name, "path": lambda v: _onnx_path(v, base_dir),
            "slices": _slices, "slo_ms": _positive,
            "priority": _one_of(Priority),
            "arrival": lambda v, p=f"{prefix}.arrival": _arrival(source, p, v),
            "instances": _integer(1, 16), "shapes": _shapes, "batch": check_batch,
        }
        model = WorkloadModel(**_fields(source, prefix, entry, WorkloadModel, checks))
        for j, earlier in enumerate(models):
            if earlier.name == model.name:
                raise ConfigError(source, f"{prefix}.name",
                                  f"a name not already used by models[{j}]", model.name)
        models.append(model)
    return tuple(models)


def parse_workload(data: object, source: str, base_dir: Path) -> Workload:
    """A Workload from loaded YAML; relative model paths are resolved against `base_dir`."""
    checks: _Checks = {
        "device": _one_of(SIM_DEVICES), "duration_s": _positive, "seed": _integer(0),
        "models": lambda v: _models(source, v, Path(base_dir)),
    }
    return Workload(**_fields(source, "", data, Workload, checks), source=source)


def load_workload(path: str | os.PathLike) -> Workload:
    """Read and validate a workload YAML file."""
    return parse_workload(read_yaml(path), os.fspath(path), Path(path).parent)


def with_device(workload: Workload, device: str) -> Workload:
    """`workload` on another simulated device (the command line's --device)."""
    try:
        device = _one_of(SIM_DEVICES)(device)
    except _Invalid as e:
        raise _fail("--device", "device", e) from None
    return dataclasses.replace(workload, device=device)


def arrival_times(arrival: Arrival, duration_s: float, rng: np.random.Generator) -> list[float]:
    """Open-loop arrival times in seconds, ascending, within [0, duration_s).

    Periodic: phase + k / fps, each late by uniform [0, jitter) when jitter is set (k / fps, not
    a running sum, so there is no drift); `sources` cameras each give one such frame per
    period, each with its own jitter draw. Poisson: exponential gaps drawn from `rng`. Closed:
    [] (the simulator submits `concurrency` requests at 0 and one more per completion).
    """
    if arrival.kind == "closed" or duration_s <= 0:
        return []
    if arrival.kind == "periodic":
        assert arrival.fps is not None
        phase_s = arrival.phase_ms / 1000.0
        count = max(0, math.ceil((duration_s - phase_s) * arrival.fps))
        times = np.repeat(phase_s + np.arange(count) / arrival.fps, arrival.sources)
        if arrival.jitter_ms > 0:
            times = times + rng.uniform(0.0, arrival.jitter_ms / 1000.0, size=times.size)
        times = np.sort(times)
    elif arrival.kind == "poisson":
        assert arrival.rate_rps is not None
        chunks, end = [], 0.0
        expected = arrival.rate_rps * duration_s
        size = int(expected + 4 * math.sqrt(expected)) + 16  # one chunk nearly always suffices
        while end < duration_s:
            chunk = end + np.cumsum(rng.exponential(1.0 / arrival.rate_rps, size=size))
            chunks.append(chunk)
            end = float(chunk[-1])
        times = np.concatenate(chunks)
    else:
        raise ValueError(f"unknown arrival kind {arrival.kind!r}")
    return [float(t) for t in times if t < duration_s]


def auto_slices(workload: Workload, solo_us: dict[str, float]) -> dict[str, int]:
    """Slice counts for the models with `slices: auto`, from each model's estimated solo time
    on the workload's device (`solo_us`), evenly sized as in SPLIT. The target slice time is
    the lesser of
    - AUTO_SHARE of the tightest realtime slack (its SLO, or for a camera its frame period if
      shorter, less its solo time): the most a realtime request can wait behind a slice, and
    - the shortest realtime model's solo time: a frame that meets a best-effort slice it
      cannot run beside then overlaps it for at most its own length, and best-effort work
      finds room in the gaps between frames.
    Every model is cut into at least AUTO_MIN_SLICES (realtime ones into exactly that): the
    policy can then co-run the parts of two models that complement each other, which a
    whole-model demand averages away. With no realtime model only that minimum applies."""
    slacks, solos = [], []
    for m in workload.models:
        if m.priority is not Priority.REALTIME:
            continue
        budget_ms = m.slo_ms
        if m.arrival.kind == "periodic":
            budget_ms = min(budget_ms, 1e3 / m.arrival.fps)
        slacks.append(budget_ms * 1e3 - solo_us[m.name])
        solos.append(solo_us[m.name])
    target_us = min(AUTO_SHARE * max(min(slacks), 0.0), min(solos)) if slacks else math.inf
    counts = {}
    for m in workload.models:
        if m.slices != AUTO:
            continue
        if m.priority is Priority.REALTIME:
            counts[m.name] = AUTO_MIN_SLICES
            continue
        n = MAX_SLICES if target_us <= 0 else math.ceil(solo_us[m.name] / target_us)
        counts[m.name] = max(AUTO_MIN_SLICES, min(MAX_SLICES, n))
    return counts
