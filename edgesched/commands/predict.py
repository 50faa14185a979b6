"""`edgesched predict`: will these models, at these rates, keep their SLOs on this device?

Before anything is deployed: the simulated device is rebuilt from a calibration profile
(each slice's measured time, SM and bandwidth demand; the fitted co-run behaviour), the
proposed combination runs under the configured policy, and each model also runs alone. The
answer per model: latency alone and together (p50/p99), SLO attainment, what it is bound by,
and plainly whether the combination fits. Every figure is a simulated prediction.
Shapes: a profile holds times at the input shapes calibrate measured (its meta records them);
a configured model with a dynamic input and no shape, or configured at other shapes than
those measured, stops predict with one line (check_shapes).
"""
from __future__ import annotations

from pathlib import Path

from edgesched.commands.simulate import run_policy
from edgesched.commands.table import format_table
from edgesched.commands.workload import Arrival, Workload, WorkloadModel
from edgesched.config import Config
from edgesched.errors import ConfigError
from edgesched.modelfiles.shaping import model_shapes
from edgesched.sched.profile import Profile
from edgesched.shapes import ShapeError, ShapeRange, file_hint
from edgesched.types import Priority

FITS_ATTAINMENT = 0.99       # a realtime model fits if at least this share meets its SLO
BEST_EFFORT_SLO_MS = 1000.0  # objective given to best-effort models named without one


def parse_spec(text: str, profile: Profile, defaults: dict[str, tuple[float, Priority]]
               ) -> WorkloadModel:
    """MODEL[:RATE[:SLO]]: RATE requests/s arriving periodically (omitted: a closed loop, one
    in flight, i.e. as fast as it is served); SLO ms (omitted: the config's, else best effort)."""
    name, *rest = text.split(":")
    if name not in profile.demands:
        raise ConfigError("predict", text, "a model in the profile: "
                          + ", ".join(sorted(profile.demands)), name)
    if len(rest) > 2:
        raise ConfigError("predict", text, "MODEL[:RATE[:SLO]]")
    try:
        rate = float(rest[0]) if rest and rest[0] else None
        slo = float(rest[1]) if len(rest) > 1 and rest[1] else None
    except ValueError:
        raise ConfigError("predict", text, "numbers for RATE (req/s) and SLO (ms)") from None
    if (rate is not None and not rate > 0) or (slo is not None and not slo > 0):
        raise ConfigError("predict", text, "RATE and SLO > 0")
    if slo is None and name in defaults:
        slo, priority = defaults[name]
    else:
        priority = Priority.REALTIME if slo is not None else Priority.BEST_EFFORT
    arrival = (Arrival("periodic", rate, None, None) if rate is not None
               else Arrival("closed", None, None, 1))
    return WorkloadModel(name, Path("profile"), len(profile.demands[name]),
                         slo if slo is not None else BEST_EFFORT_SLO_MS, priority, arrival)


def measured_shapes(profile: Profile, model: str) -> dict | None:
    """The input shapes (ShapeRange JSON) `model` was calibrated at; None: not recorded."""
    entry = profile.meta.get("models", {}).get(model) if isinstance(
        profile.meta.get("models"), dict) else None
    shapes = entry.get("shapes") if isinstance(entry, dict) else None
    return shapes if isinstance(shapes, dict) else None


def check_shapes(profile: Profile, config: Config, names: list[str], where: str) -> None:
    """Each named model the config serves needs a shape for every dynamic input (ShapeError
    naming the model, the input and the file), at the `opt` the profile `where` measured
    (ConfigError: recalibrate) where the profile records it."""
    for i, m in enumerate(config.models):
        if m.name not in names:
            continue
        now = model_shapes(m.name, m.path, m.shapes, file_hint(config.source, i))
        then_opt = _opts(measured_shapes(profile, m.name))
        if then_opt is not None and then_opt != {k: r.opt for k, r in now.items()}:
            raise ConfigError(config.source, f"models[{i}].shapes", "the shapes "
                              f"{where} was calibrated at ({_text(then_opt)}), or a "
                              "recalibration", _text({k: r.opt for k, r in now.items()}))


def _opts(shapes: dict | None) -> dict[str, tuple[int, ...]] | None:
    """input -> opt of recorded ShapeRange JSON; None if absent or unreadable (hand-edited)."""
    try:
        return None if shapes is None else {
            k: ShapeRange.from_json(v).opt for k, v in shapes.items()}
    except ShapeError:
        return None


def _text(shapes: dict) -> str:
    return ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())


def bottleneck(profile: Profile, model: str) -> str:
    """What the model's slices wait on most when the device is shared: SMs or bandwidth."""
    demands = profile.demands[model]
    sm = sum(d.duration_us * d.sm * d.compute_share for d in demands)
    mem = sum(d.duration_us * d.mem for d in demands)
    return "SM" if sm >= mem else "bandwidth"


def predict(profile: Profile, models: list[WorkloadModel], policy: str,
            duration_s: float = 30.0, seed: int = 1) -> dict:
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("predict", "MODEL", "each model once", ", ".join(names))
    workload = Workload(profile.device, duration_s, seed, tuple(models), "predict")
    together = run_policy(workload, None, policy, profile)
    out = {"simulated": True, "device": profile.device, "policy": policy,
           "duration_s": duration_s, "models": {}}
    misses = []
    for m in models:
        alone = run_policy(workload, None, policy, profile, only={m.name})[m.name]
        shared = together[m.name]
        fits = shared["slo_attainment"] is not None and shared["slo_attainment"] >= \
            FITS_ATTAINMENT
        if not fits:
            misses.append(m.name)
        out["models"][m.name] = {
            "priority": m.priority.value, "slo_ms": m.slo_ms,
            "alone": {k: alone[k] for k in ("p50_ms", "p99_ms")},
            "together": {k: shared[k] for k in ("p50_ms", "p99_ms", "throughput_rps")},
            "slo_attainment": shared["slo_attainment"], "bottleneck": bottleneck(profile, m.name),
            "shapes": measured_shapes(profile, m.name), "fits": fits}
    out["fits"] = not misses
    out["verdict"] = ("fits: every model keeps its SLO" if not misses else
                      "does not fit: " + ", ".join(misses) + " miss their SLO")
    return out


def format_prediction(result: dict) -> str:
    rows = [[name, m["priority"], m["slo_ms"], m["alone"]["p50_ms"], m["alone"]["p99_ms"],
             m["together"]["p50_ms"], m["together"]["p99_ms"], m["together"]["throughput_rps"],
             "-" if m["slo_attainment"] is None else f"{100 * m['slo_attainment']:.1f}%",
             m["bottleneck"]] for name, m in result["models"].items()]
    shaped = [f"{name} at {_text(opts)}" for name, m in result["models"].items()
              if (opts := _opts(m.get("shapes")))]
    return "\n".join([
        f"PREDICTED (simulated from the profile of {result['device']}, policy "
        f"{result['policy']}, {result['duration_s']:g} s"
        + (f"; inputs {'; '.join(shaped)}" if shaped else "") + "):",
        format_table(["model", "priority", "slo_ms", "alone_p50", "alone_p99", "p50_ms",
                      "p99_ms", "req/s", "slo_met", "bound by"], rows),
        result["verdict"]])
