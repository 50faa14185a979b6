"""`edgesched calibrate`: measure every slice of every configured model on this device.

The measurement itself is profiling.measure_profile (solo runs, telemetry, probes, pair
co-runs). This module picks the backend, records the conditions a profile is only valid for
(device, power mode, clocks, versions) and the input shapes each model was measured at,
writes the profile, and reports: a table, and a PNG (demands; predicted vs measured slowdown
on held-out pairs) when matplotlib is installed. Models run at the `opt` of their shapes
(config `shapes:`, else a sliced directory's manifest); a dynamic input without one stops
calibration before anything runs, with one line naming the model, the input and the file.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import platform
from pathlib import Path
from typing import Callable

from edgesched.backends import create_backend, load_models, resolve_backend_name
from edgesched.backends.sim import SimBackend
from edgesched.commands.measure import measure_profile
from edgesched.commands.table import format_table
from edgesched.config import Config
from edgesched.errors import BackendUnavailable
from edgesched.modelfiles.shaping import model_shapes
from edgesched.profiles import ROOT, current_conditions
from edgesched.sched.profile import Profile
from edgesched.shapes import file_hint, to_json
from edgesched.types import BackendName
from edgesched.version import __version__

log = logging.getLogger("edgesched.commands.calibrate")
CALIBRATION_STREAMS = 3      # profiling co-runs on streams 1 and 2 (0 is the priority stream)


def _backend(config: Config):
    streams = max(config.device.streams, CALIBRATION_STREAMS)
    name = resolve_backend_name(config.device.backend)
    if name is BackendName.SIM:
        # Calibration needs no wall clock: the virtual one measures the same device, faster.
        return SimBackend(config.device.sim_device, streams, seed=1)
    if name is BackendName.TENSORRT:
        return _tensorrt_backend(config, streams)
    return create_backend(name, streams, config.device.cpu_threads_per_stream,
                          config.device.sim_device)


def _tensorrt_backend(config: Config, streams: int):
    """TensorRT with every launch timed by CUDA events, and the configured telemetry sampled
    for the solo windows (none found: EMC demand reads 0 and a warning says so)."""
    from edgesched.backends.tensorrt import TensorRTBackend
    from edgesched.telemetry import open_reader
    backend = TensorRTBackend(streams, timed=True)
    try:
        reader = open_reader(config.telemetry.value)
    except Exception as e:
        backend.close()
        raise BackendUnavailable(f"calibration telemetry: {e}") from None
    if reader is None:
        log.warning("no telemetry source: calibration measures no EMC (DRAM) utilization and "
                    "GPU load (start jtop.service, or set telemetry:)")
    else:
        backend.attach_telemetry(reader)
    return backend


def _versions() -> dict:
    versions = {"edgesched": __version__, "python": platform.python_version()}
    for package in ("onnxruntime", "tensorrt", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def calibrate(config: Config, runs: int = 5, pairs: int = 40, seed: int = 0,
              progress: Callable[[str], None] | None = None, root: Path = ROOT) -> Profile:
    """`root`: the filesystem root the device identity is read under (tests: a fixture)."""
    shapes = {m.name: model_shapes(m.name, m.path, m.shapes, file_hint(config.source, i))
              for i, m in enumerate(config.models)}
    conditions = current_conditions(config, root)
    backend = _backend(config)
    try:
        models = load_models(backend, [dataclasses.replace(m, shapes=shapes[m.name])
                                       for m in config.models])
        profile = measure_profile(backend, models, conditions["device"], runs=runs, pairs=pairs,
                                  seed=seed, progress=progress)
        identity = _backend_identity(backend)
    finally:
        backend.close()
    meta = {**profile.meta, **conditions, "backend": backend.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {**_versions(), **identity},
            "models": {m.name: {"source": str(m.path), "slices": models[m.name].num_slices,
                                "shapes": to_json(shapes[m.name]),
                                **({"batch": m.batch.to_json()} if m.batch else {})}
                       for m in config.models}}
    return dataclasses.replace(profile, meta=meta)


def _backend_identity(backend) -> dict:
    identity = getattr(backend, "identity", None)
    return identity() if callable(identity) else {}


def report(profile: Profile) -> str:
    rows = [[model, i, d.duration_us, d.sm, d.compute_frac, d.mem]
            for model, demands in profile.demands.items() for i, d in enumerate(demands)]
    p, mape = profile.predictor, profile.meta.get("predictor_mape")
    batches = [f"{model} batch latency (solo, all slices): " + ", ".join(
        f"{rows} rows {ms * 1e3:.3f} ms ({ms * 1e3 / rows:.3f}/row)"
        for rows, ms in sorted(table.items()))
        for model, table in profile.batch_seconds().items()]
    return "\n".join([
        f"profile of {profile.device} ({profile.meta.get('backend')}, "
        f"{profile.meta.get('pairs', 0)} pair co-runs)",
        format_table(["model", "slice", "solo_us", "sm", "compute_frac", "mem"], rows),
        *batches,
        f"predictor a={p.a:.3f} b={p.b:.3f} c={p.c:.3f}; held-out error "
        + ("-" if mape is None else f"{100 * mape:.1f}%")])


def plot(profile: Profile, path: Path) -> bool:
    """Write the PNG report; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for model, demands in profile.demands.items():
        left.scatter([d.sm for d in demands], [d.mem for d in demands],
                     s=[20 + d.duration_us / 20 for d in demands], alpha=0.6, label=model)
    left.set(xlabel="SM demand (fraction)", ylabel="DRAM bandwidth (fraction)",
             title="per-slice demand (size: solo time)", xlim=(0, 1.05), ylim=(0, 1.05))
    left.legend(fontsize="small")
    points = profile.meta.get("validation") or []
    if points:
        predicted, measured = zip(*points)
        top = max(max(predicted), max(measured)) * 1.05
        right.scatter(measured, predicted, s=12)
        right.plot([1, top], [1, top], "k--", linewidth=1)
    right.set(xlabel="measured slowdown", ylabel="predicted slowdown",
              title="held-out co-runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
