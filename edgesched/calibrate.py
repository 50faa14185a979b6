"""`edgesched calibrate`: measure every slice of every configured model on this device.

The measurement itself is profiling.measure_profile (solo runs, telemetry, probes, pair
co-runs). This module picks the backend, records the conditions a profile is only valid for
(device, power mode, clocks, versions), writes the profile, and reports: a table, and a PNG
(demands; predicted vs measured slowdown on held-out pairs) when matplotlib is installed.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import os
import platform
from pathlib import Path
from typing import Callable

from edgesched import __version__
from edgesched.backends import create_backend, resolve_backend_name
from edgesched.backends.sim import SimBackend
from edgesched.config import Config
from edgesched.errors import BackendUnavailable
from edgesched.profiling import measure_profile
from edgesched.sched.profile import Profile
from edgesched.table import format_table
from edgesched.types import BackendName, SliceDemand

log = logging.getLogger("edgesched.calibrate")
CALIBRATION_STREAMS = 3      # profiling co-runs on streams 1 and 2 (0 is the priority stream)


def device_name(config: Config) -> str:
    """What a profile is tied to: the simulated module, or this machine's CPU."""
    backend = resolve_backend_name(config.device.backend)
    if backend is BackendName.SIM:
        return config.device.sim_device
    if backend is BackendName.ONNXRUNTIME:
        return f"cpu:{platform.machine()}:{os.cpu_count()}cores"
    return backend.value


def current_conditions(config: Config) -> dict:
    """Device and, where telemetry can tell, power mode and clocks, read now."""
    conditions: dict = {"device": device_name(config)}
    try:
        from edgesched.telemetry import open_reader
        reader = open_reader(config.telemetry.value)
    except Exception as e:   # a telemetry problem must not stop calibration or serving
        log.info("no telemetry: %s", e)
        reader = None
    if reader is not None:
        try:
            sample = reader.read()
            conditions.update(telemetry=reader.name, nvpmodel=sample.nvpmodel,
                              jetson_clocks=sample.jetson_clocks,
                              gpu_freq_mhz=sample.gpu_freq_mhz, emc_freq_mhz=sample.emc_freq_mhz)
        finally:
            reader.close()
    return conditions


def mismatch(profile: Profile, conditions: dict) -> str | None:
    """Why `profile` is not valid under `conditions` (None: it is). Clocks are compared only
    through the power mode and jetson_clocks state, which pin them."""
    meta = profile.meta
    if profile.device != conditions.get("device"):
        return f"it was measured on {profile.device!r}, this is {conditions.get('device')!r}"
    for key in ("nvpmodel", "jetson_clocks"):
        then, now = meta.get(key), conditions.get(key)
        if then is not None and now is not None and then != now:
            return f"it was measured with {key} {then!r}, now it is {now!r}"
    return None


def estimate_profile(config: Config) -> Profile:
    """Demands from the ONNX cost model on the configured module's spec, for serving before
    any calibration: right in proportion, not measured. Models without ONNX (bare engines)
    are left out: the scheduler treats them conservatively."""
    import onnx

    from edgesched.backends.sim_device import SPECS, slice_work
    from edgesched.manifest import MANIFEST_NAME, read_manifest
    spec = SPECS[config.device.sim_device]
    demands = {}
    for m in config.models:
        if (m.path / MANIFEST_NAME).is_file():
            manifest = read_manifest(m.path)
            files = [manifest.slice_path(s) for s in manifest.slices]
        elif m.path.suffix == ".onnx":
            files = [m.path]
        else:
            continue
        works = [slice_work(onnx.load(str(f)), spec) for f in files]
        demands[m.name] = tuple(SliceDemand(w.sm_peak, w.mem, w.duration_us,
                                            w.compute_us / w.duration_us) for w in works)
    return Profile(f"estimate:{spec.name}", demands,
                   meta={"estimated": True, "method": f"cost model on {spec.name} figures"})


def _backend(config: Config):
    streams = max(config.device.streams, CALIBRATION_STREAMS)
    name = resolve_backend_name(config.device.backend)
    if name is BackendName.SIM:
        # Calibration needs no wall clock: the virtual one measures the same device, faster.
        return SimBackend(config.device.sim_device, streams, seed=1)
    if name is BackendName.TENSORRT:
        raise BackendUnavailable("calibrating on TensorRT needs CUDA probe kernels, which "
                                 "are not written yet: calibrate with backend: sim to try it")
    return create_backend(name, streams, config.device.cpu_threads_per_stream,
                          config.device.sim_device)


def _versions() -> dict:
    versions = {"edgesched": __version__, "python": platform.python_version()}
    for package in ("onnxruntime", "tensorrt", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def calibrate(config: Config, runs: int = 5, pairs: int = 40, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> Profile:
    from edgesched.serve.server import load_models
    conditions = current_conditions(config)
    backend = _backend(config)
    try:
        models = load_models(backend, config)
        profile = measure_profile(backend, models, conditions["device"], runs=runs, pairs=pairs,
                                  seed=seed, progress=progress)
    finally:
        backend.close()
    meta = {**profile.meta, **conditions, "backend": backend.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "models": {m.name: {"source": str(m.path), "slices": models[m.name].num_slices}
                       for m in config.models}}
    return dataclasses.replace(profile, meta=meta)


def report(profile: Profile) -> str:
    rows = [[model, i, d.duration_us, d.sm, d.compute_frac, d.mem]
            for model, demands in profile.demands.items() for i, d in enumerate(demands)]
    p, mape = profile.predictor, profile.meta.get("predictor_mape")
    return "\n".join([
        f"profile of {profile.device} ({profile.meta.get('backend')}, "
        f"{profile.meta.get('pairs', 0)} pair co-runs)",
        format_table(["model", "slice", "solo_us", "sm", "compute_frac", "mem"], rows),
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
