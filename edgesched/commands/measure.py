"""Measure a profile through the Backend interface: solo durations, demands, co-run slowdowns.

Nothing here reads a device's internals. On the simulated GPU (and, with the calibration
issue, on TensorRT) it uses what a Jetson offers: timed launches, the EMC utilization a
telemetry reader reports, and probe kernels of known SM footprint:
- duration_us: median of solo runs (device time between CUDA timing events where the backend
  reports it, else the completion's host times), run back to back for at least the backend's
  `min_window_s` (telemetry's averaging window: TensorRT) and at least `runs` times;
- mem: EMC utilization averaged over the solo runs (and the SM busy fraction, for slices
  that compute probes do not slow);
- sm, compute_frac: from the slowdown under compute probes of two footprints f (mem 0): the
  compute-bound share of the slice stretches by max(0, sm + f - 1), so the ratio of the
  slowdowns at f = 1 and f = 0.75 is (sm - 0.25) / sm, and the slowdown at f = 1 is
  compute_frac * sm;
- pairs: sampled slice pairs co-run (each partner relaunched back to back so every measured
  run is fully overlapped) fit the predictor; its error on held-out pairs is reported.
"""
from __future__ import annotations

import random
from typing import Callable

from edgesched.commands.measure_batch import measure_batches
from edgesched.commands.measure_runner import Runner
from edgesched.sched.predictor import Predictor, fit_and_validate, holdout_split
from edgesched.sched.profile import Profile
from edgesched.types import CoRun, ModelInfo, SliceDemand


def measure_profile(backend, models: dict[str, ModelInfo], device: str, runs: int = 5,
                    pairs: int = 40, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> Profile:
    runner = Runner(backend)
    demands: dict[str, tuple[SliceDemand, ...]] = {}
    min_window_s = float(getattr(backend, "min_window_s", 0.0))
    node_us: dict[str, dict[str, float]] = {}    # model -> ONNX node -> measured us per run
    for name, info in models.items():
        slices = []
        for i in range(info.num_slices):
            backend.telemetry()                              # start a fresh window
            solo = runner.solo(name, i, runs, min_window_s)
            busy, emc = backend.telemetry()
            sm, compute_frac = _compute_from_probes(runner, name, i, solo, busy, runs)
            slices.append(SliceDemand(sm, min(emc, 1.0), solo * 1e6, compute_frac))
            if hasattr(backend, "profile_layers"):     # TensorRT: IProfiler on a few runs
                backend.profile_layers(name, i, True)
                try:
                    for _ in range(runs):
                        runner.run(name, i)
                finally:
                    node_us.setdefault(name, {}).update(backend.profile_layers(name, i, False))
        demands[name] = tuple(slices)
        if progress:
            progress(name)
    everything = [(m, i) for m, ds in demands.items() for i in range(len(ds))]
    rng = random.Random(seed)
    samples = []
    # A backend whose instances run one launch each (TensorRT: an execution context per
    # instance) co-runs a slice with itself only where the model has two instances.
    exclusive = bool(getattr(backend, "exclusive_instances", False))
    for _ in range(pairs if len(everything) > 0 else 0):
        a, b = rng.choice(everything), rng.choice(everything)
        if exclusive and a == b and models[a[0]].instances < 2:
            others = [x for x in everything if x != a]
            if not others:
                continue
            b = rng.choice(others)
        ta, tb = runner.co_run(a, b)
        da, db = demands[a[0]][a[1]], demands[b[0]][b[1]]
        samples.append(CoRun((da, db), (ta * 1e6 / da.duration_us, tb * 1e6 / db.duration_us)))
    try:
        predictor, mape = fit_and_validate(samples, seed=seed)
        _, held_out = holdout_split(samples, seed=seed)
        validation = [[p, m] for s in held_out
                      for p, m in zip(predictor.slowdowns(s.demands), s.slowdowns)]
    except ValueError:       # too few pairs, or none showed contention: keep the default form
        predictor, mape, validation = Predictor(), None, []
    return Profile(device, demands, predictor,
                   {"pairs": len(samples), "predictor_mape": mape, "runs": runs,
                    "validation": validation, **({"node_us": node_us} if node_us else {}),
                    "method": "solo runs, EMC telemetry, compute probes, pair co-runs"},
                   measure_batches(backend, models, runs))


def _compute_from_probes(runner: Runner, model: str, index: int, solo_s: float,
                         busy: float, runs: int) -> tuple[float, float]:
    """(sm, compute_frac): beside a compute probe of footprint f the slice slows by
    compute_frac * max(0, sm + f - 1); footprints 1 and 0.75 give both unknowns. A slice the
    probes do not slow still occupies SMs (stalled on memory): its sm is the busy fraction
    telemetry saw, so co-runners still feel it."""
    full = runner.with_probe(1.0, model, index, runs) / solo_s - 1.0
    if full < 0.01:
        return min(max(busy, 0.0), 1.0), 0.0
    part = max(runner.with_probe(0.75, model, index, runs) / solo_s - 1.0, 0.0)
    ratio = min(part / full, 0.95)
    sm = max(0.05, min(1.0, 0.25 / (1.0 - ratio)))
    return sm, max(0.0, min(1.0, full / sm))
