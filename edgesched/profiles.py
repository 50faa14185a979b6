"""Which profile the scheduler runs on: the calibrated one, if it was measured on this device
under today's conditions (power mode, jetson_clocks), else estimates from the cost model.

The server and `edgesched calibrate` share this: calibrate records the conditions a profile
is valid for (`current_conditions`), the server checks them (`mismatch`) before trusting it.
"""
from __future__ import annotations

import logging
import os
import platform

from edgesched.backends import resolve_backend_name
from edgesched.config import Config
from edgesched.errors import ConfigError
from edgesched.sched.profile import Profile
from edgesched.types import BackendName, PolicyName, SliceDemand

log = logging.getLogger("edgesched.profiles")


def choose_profile(config: Config, force: bool = False) -> Profile | None:
    """The configured profile. None configured, missing, or measured on another device or
    power mode (unless `force`): reported, and the scheduler runs on cost-model estimates.
    Unreadable: start-up stops with one line. Only `interference` reads a profile."""
    if config.scheduler.policy is not PolicyName.INTERFERENCE:
        return None
    if config.profile is None or not config.profile.is_file():
        log.warning("no profile%s (run `edgesched calibrate`); scheduling with cost-model "
                    "estimates", f" at {config.profile}" if config.profile else "")
        return estimate_profile(config)
    try:
        profile = Profile.load(config.profile)
    except (ValueError, OSError) as e:
        raise ConfigError(config.source, "profile", "a profile written by edgesched "
                          f"({config.profile}: {str(e).splitlines()[0]})") from None
    reason = mismatch(profile, current_conditions(config))
    if reason and not force:
        log.warning("ignoring profile %s: %s (recalibrate, or serve --force-profile); "
                    "scheduling with cost-model estimates", config.profile, reason)
        return estimate_profile(config)
    return profile


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
    from edgesched.modelfiles.manifest import MANIFEST_NAME, read_manifest
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
