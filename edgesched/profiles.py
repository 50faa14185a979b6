"""Which profile the scheduler runs on: the calibrated one, if it was measured on this device
under today's conditions (power mode, jetson_clocks), else estimates from the cost model.

The server and `edgesched calibrate` share this: calibrate records the conditions a profile
is valid for (`current_conditions`), the server checks them (`mismatch`) before trusting it.
Both need the Jetson module (`which_module`): on backend sim the simulated one
(`device.sim_device`), elsewhere `device.module`, read from the device tree when `auto`.
Every function here that may read the device tree takes the filesystem root it is under.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from edgesched.backends import resolve_backend_name
from edgesched.config import MODULE_AUTO, Config
from edgesched.errors import ConfigError
from edgesched.sched.profile import Profile
from edgesched.types import BackendName, PolicyName, SliceDemand

log = logging.getLogger("edgesched.profiles")
ROOT = Path("/")
# Figures for estimates when the module is unknown (a CPU box, a board without figures): the
# default simulated module's, as before device.module existed; right in proportion only.
FALLBACK_FIGURES = "orin-nano"


@dataclass(frozen=True)
class ModuleChoice:
    module: str | None    # one of edgesched.devices.MODULES; None: unknown (no figures)
    source: str           # how it was chosen, for log lines and profile meta


def which_module(config: Config, root: Path = ROOT) -> ModuleChoice:
    """The Jetson module estimates and profiles are for: `device.sim_device` on backend sim,
    else `device.module`, where `auto` reads the device-tree model string under `root`."""
    device = config.device
    if resolve_backend_name(device.backend) is BackendName.SIM:
        return ModuleChoice(device.sim_device, "device.sim_device")
    if device.module != MODULE_AUTO:
        return ModuleChoice(device.module, "device.module")
    from edgesched.telemetry.devicetree import read_board
    board = read_board(root)
    if board.model is None:
        return ModuleChoice(None, "device.module auto: no device-tree model string")
    said = f"device.module auto: device tree says {board.model!r}"
    return ModuleChoice(board.module, said if board.module else said + ", a module without "
                        "figures (set device.module if it is one of them)")


def choose_profile(config: Config, force: bool = False, root: Path = ROOT) -> Profile | None:
    """The configured profile. None configured, missing, or measured on another device or
    power mode (unless `force`): reported, and the scheduler runs on cost-model estimates.
    Unreadable: start-up stops with one line. Only `interference` reads a profile."""
    if config.scheduler.policy is not PolicyName.INTERFERENCE:
        return None
    if config.profile is None or not config.profile.is_file():
        log.warning("no profile%s (run `edgesched calibrate`); scheduling with cost-model "
                    "estimates", f" at {config.profile}" if config.profile else "")
        return estimate_profile(config, root)
    try:
        profile = Profile.load(config.profile)
    except (ValueError, OSError) as e:
        raise ConfigError(config.source, "profile", "a profile written by edgesched "
                          f"({config.profile}: {str(e).splitlines()[0]})") from None
    reason = mismatch(profile, current_conditions(config, root))
    if reason and not force:
        log.warning("ignoring profile %s: %s (recalibrate, or serve --force-profile); "
                    "scheduling with cost-model estimates", config.profile, reason)
        return estimate_profile(config, root)
    return profile


def device_name(config: Config, root: Path = ROOT) -> str:
    """What a profile is tied to: the simulated module ("orin-nx"), this machine's CPU
    ("cpu:aarch64:8cores"), or TensorRT on a module ("tensorrt:orin-agx"; plain "tensorrt"
    when the module is unknown)."""
    backend = resolve_backend_name(config.device.backend)
    if backend is BackendName.SIM:
        return config.device.sim_device
    if backend is BackendName.ONNXRUNTIME:
        return f"cpu:{platform.machine()}:{os.cpu_count()}cores"
    module = which_module(config, root).module if backend is BackendName.TENSORRT else None
    return f"{backend.value}:{module}" if module else backend.value


def current_conditions(config: Config, root: Path = ROOT) -> dict:
    """Device, module, the board's model string and L4T release, TensorRT's version (backend
    tensorrt) and, where telemetry can tell, power mode and clocks, read now."""
    from edgesched.telemetry.devicetree import read_l4t, read_model
    conditions: dict = {"device": device_name(config, root),
                        "module": which_module(config, root).module,
                        "model": read_model(root), "l4t": read_l4t(root)}
    if resolve_backend_name(config.device.backend) is BackendName.TENSORRT:
        conditions["tensorrt"] = _tensorrt_version()
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
            board = getattr(reader, "board_model", None)   # jtop's board info
            if conditions["model"] is None and board:
                conditions["model"] = board
        finally:
            reader.close()
    return conditions


def _tensorrt_version() -> str | None:
    try:
        from edgesched.backends.tensorrt import version
        return version()
    except Exception:    # not importable here: serving on it fails later, with its own reason
        return None


def _release(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def mismatch(profile: Profile, conditions: dict) -> str | None:
    """Why `profile` is not valid under `conditions` (None: it is). Another module, power mode,
    jetson_clocks state or TensorRT major.minor: not valid. Another TensorRT patch release:
    valid, with a one-line note logged (kernels are the same release's). Clocks are compared
    only through the power mode and jetson_clocks state, which pin them."""
    meta = profile.meta
    then, now = profile.device, conditions.get("device")
    if then != now:
        modules = [d.partition(":")[2] for d in (then, now)
                   if isinstance(d, str) and d.startswith(f"{BackendName.TENSORRT.value}:")]
        if len(modules) == 2:   # TensorRT on both: say it is the module that differs
            return (f"it was measured on Jetson module {modules[0]} and this is {modules[1]} "
                    f"({then!r} vs {now!r}; device.module sets this one)")
        return f"it was measured on {then!r}, this is {now!r}"
    for key in ("nvpmodel", "jetson_clocks"):
        then, now = meta.get(key), conditions.get(key)
        if then is not None and now is not None and then != now:
            return f"it was measured with {key} {then!r}, now it is {now!r}"
    then, now = meta.get("tensorrt"), conditions.get("tensorrt")
    if then and now and then != now:
        if _release(then) != _release(now):
            return (f"it was measured with TensorRT {then}, this is TensorRT {now} (another "
                    "release picks other kernels)")
        log.info("profile measured with TensorRT %s, serving on %s: a patch release apart, "
                 "accepted", then, now)
    return None


def estimate_profile(config: Config, root: Path = ROOT) -> Profile:
    """Demands from the ONNX cost model on the module's spec (which_module), for serving
    before any calibration: right in proportion, not measured. An unknown module gets
    FALLBACK_FIGURES, said in one log line and in the meta. Models are costed at the `opt` of
    their shapes (config `shapes:`, else the manifest's). Models without ONNX (bare engines)
    and models with a dynamic input and no shape (a warning says which and how to give it)
    are left out: the scheduler treats them conservatively."""
    import onnx

    from edgesched.backends.sim_device import SPECS, slice_work
    from edgesched.modelfiles.manifest import MANIFEST_NAME, read_manifest
    from edgesched.modelfiles.shaping import model_shapes, slice_shapes
    from edgesched.shapes import ShapeError, file_hint
    choice = which_module(config, root)
    spec = SPECS[choice.module or FALLBACK_FIGURES]
    if choice.module:
        log.info("cost-model estimates on %s figures (%s)", spec.name, choice.source)
    else:
        # On TensorRT the GPU is real and these durations are another module's: say so louder.
        gpu = resolve_backend_name(config.device.backend) is BackendName.TENSORRT
        log.log(logging.WARNING if gpu else logging.INFO,
                "cost-model estimates on %s figures, right in proportion only: %s",
                spec.name, choice.source)
    demands = {}
    for i, m in enumerate(config.models):
        if not (m.path / MANIFEST_NAME).is_file() and m.path.suffix != ".onnx":
            continue
        try:
            shapes = model_shapes(m.name, m.path, m.shapes, file_hint(config.source, i))
        except ShapeError as e:
            log.warning("no cost-model estimate for %s: %s", m.name, e)
            continue
        if (m.path / MANIFEST_NAME).is_file():
            manifest = read_manifest(m.path)
            graphs = [onnx.load(str(manifest.slice_path(s))) for s in manifest.slices]
            per_slice = slice_shapes(manifest, shapes, graphs)
        else:
            graphs, per_slice = [onnx.load(str(m.path))], [shapes]
        works = [slice_work(g, spec, s) for g, s in zip(graphs, per_slice)]
        demands[m.name] = tuple(SliceDemand(w.sm_peak, w.mem, w.duration_us,
                                            w.compute_us / w.duration_us) for w in works)
    method = f"cost model on {spec.name} figures" + ("" if choice.module else
                                                      " (module unknown: proportions only)")
    return Profile(f"estimate:{spec.name}", demands,
                   meta={"estimated": True, "method": method, "module": choice.module,
                         "figures": spec.name, "figures_from": choice.source})
