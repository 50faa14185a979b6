"""`edgesched simulate`: run a workload under each policy on a simulated Jetson GPU.

Per policy, one run of the same engine loop the server uses, on the simulator's virtual
clock, with the workload's arrival processes. Before the runs, the models are sliced as the
workload says and profiled through the backend interface (profiling.py): the `interference`
policy sees only that measured profile, never the simulator's internals. Each realtime model
is also run alone, so its co-located p99 can be compared with its solo p99.
Models are sliced and costed at their `shapes:` (opt); a dynamic input without one stops the
run before anything is simulated, with one line naming the model, the input and the file.
Every figure this module reports is simulated.
"""
from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgesched.backends import load_models
from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import spec_for
from edgesched.backends.sim_jobs import fast_constructor
from edgesched.commands.measure import measure_profile
from edgesched.commands.workload import AUTO, Workload, arrival_times, auto_slices
from edgesched.engine import Engine, Result, Submission
from edgesched.modelfiles.shaping import model_shapes
from edgesched.modelfiles.slicing import slice_model
from edgesched.sched import make_policy
from edgesched.sched.profile import Profile
from edgesched.shapes import file_hint
from edgesched.types import ModelInfo, Priority

STREAMS = 4
_submission = fast_constructor(Submission, "model", "inputs", "arrival_s")   # per request
QUEUE_DEPTH = 64
DRAIN_S = 5.0        # after the workload ends, in-flight requests get this long to finish


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    slo_met: int = 0
    rejected: int = 0              # Overloaded, DeadlineExceeded, or failed


def _prepare(workload: Workload, tmp: Path) -> dict[str, Path]:
    """Slice each model as the workload asks (one directory per model), at its shapes. Every
    model's shapes are resolved before the first is sliced: a missing one fails fast."""
    hints = {m.name: file_hint(workload.source, i) for i, m in enumerate(workload.models)}
    shapes = {m.name: model_shapes(m.name, m.path, m.shapes, hints[m.name])
              for m in workload.models}
    counts = auto_slices(workload, _solo_us(workload, shapes)) if any(
        m.slices == AUTO for m in workload.models) else {}
    paths = {}
    for m in workload.models:
        m = dataclasses.replace(m, slices=counts.get(m.name, m.slices))
        if m.slices == 1:
            paths[m.name] = m.path
        else:
            out = tmp / m.name
            slice_model(m.path, m.slices, out, name=m.name, shapes=shapes[m.name],
                        shape_hint=hints[m.name])
            paths[m.name] = out
    return paths


def _solo_us(workload: Workload, shapes: dict) -> dict[str, float]:
    """Each model's whole solo time on the workload's device, from the cost model (what the
    simulator also runs on; the scheduler's profile is measured later, as always)."""
    probe = SimBackend(spec_for(workload.device), 1, seed=workload.seed)
    for m in workload.models:
        probe.load(m.name, m.path, 1, shapes=shapes[m.name])
    return {m.name: probe.solo_us(m.name) for m in workload.models}


def slice_counts(workload: Workload) -> dict[str, int]:
    """How many slices each model is cut into (`slices: auto` resolved)."""
    hints = {m.name: file_hint(workload.source, i) for i, m in enumerate(workload.models)}
    shapes = {m.name: model_shapes(m.name, m.path, m.shapes, hints[m.name])
              for m in workload.models}
    counts = auto_slices(workload, _solo_us(workload, shapes))
    return {m.name: counts.get(m.name, m.slices) for m in workload.models}


def _load(backend: SimBackend, workload: Workload, paths: dict[str, Path],
          only: set[str] | None = None) -> dict[str, ModelInfo]:
    """The workload's models from their sliced files (`paths`), `only` those if given."""
    return load_models(backend, [dataclasses.replace(m, path=paths[m.name])
                                 for m in workload.models if only is None or m.name in only])


def _load_profiled(backend: SimBackend, workload: Workload, profile: Profile,
                   only: set[str] | None = None) -> dict[str, ModelInfo]:
    infos = {}
    for m in workload.models:
        if only is None or m.name in only:
            loaded = backend.load_profiled(m.name, profile.demands[m.name])
            infos[m.name] = ModelInfo(m.name, loaded.inputs, loaded.outputs, loaded.num_slices,
                                      m.slo_ms, m.priority, m.instances, "profile")
    return infos


def run_policy(workload: Workload, paths: dict[str, Path] | None, policy: str,
               profile: Profile | None, only: set[str] | None = None) -> dict:
    """One run of `workload` under `policy`. Models come from their sliced ONNX files
    (`paths`), or, with paths None, from the profile itself: the simulated device is then the
    one calibration measured (what `predict` runs)."""
    backend = SimBackend(spec_for(workload.device), STREAMS, seed=workload.seed, outputs=False)
    if paths is None:
        infos = _load_profiled(backend, workload, profile, only)
    else:
        infos = _load(backend, workload, paths, only)
    tallies = {name: _Tally() for name in infos}
    models = {m.name: m for m in workload.models if m.name in infos}
    engine: Engine

    slo_ms = {name: info.slo_ms for name, info in infos.items()}
    closed = {name for name, m in models.items() if m.arrival.kind == "closed"}
    duration_s = workload.duration_s

    def on_result(result: Result) -> None:       # once per request: kept lean
        model = result.model
        tally = tallies[model]
        if result.error is None:
            total_ms = result.timings.total_ms
            tally.latencies_ms.append(total_ms)
            tally.slo_met += total_ms <= slo_ms[model]
        else:
            tally.rejected += 1
        if model in closed:
            now = backend.now()
            if now < duration_s:
                engine.submit(_submission(model, {}, now), ring=False)

    # This thread drives the engine and the virtual clock: no ring (nothing waits on the
    # doorbell in virtual time, so each ring would stay queued for the whole run).
    def submit(model: str, at_s: float) -> None:
        engine.submit(Submission(model, {}, at_s), ring=False)

    engine = Engine(backend, infos, make_policy(policy, profile=profile),
                    queue_depth=QUEUE_DEPTH, on_result=on_result, clock=backend.now,
                    profile=profile)        # its latency per batch size sizes batches
    rng = np.random.default_rng(workload.seed)
    arrivals = sorted((t, m.name) for m in models.values()
                      for t in arrival_times(m.arrival, workload.duration_s, rng))
    for m in models.values():
        if m.arrival.kind == "closed":
            for _ in range(m.arrival.concurrency):
                submit(m.name, 0.0)
    i, n = 0, len(arrivals)
    step, now_s = engine.step, backend.now
    # What exists now (models, profile, arrivals) lives through the run: frozen, the cyclic
    # collector's full passes skip it (~5% of a run's CPU time here); results do not change.
    gc.freeze()
    try:
        while (now := now_s()) < duration_s:     # one step per completion: kept lean
            while i < n and arrivals[i][0] <= now:
                submit(arrivals[i][1], arrivals[i][0])
                i += 1
            next_s = arrivals[i][0] if i < n else duration_s
            step(next_s - now if next_s > now else 0.0)
        end_s = workload.duration_s + DRAIN_S
        while not engine.idle and backend.now() < end_s:
            engine.step(end_s - backend.now())
    finally:
        gc.unfreeze()
    return {name: _summary(t, workload.duration_s) for name, t in tallies.items()}


def _summary(t: _Tally, duration_s: float) -> dict:
    lat = np.asarray(t.latencies_ms)
    answered = lat.size + t.rejected
    p50, p99 = (np.percentile(lat, [50, 99]).tolist() if lat.size else (None, None))
    return {"p50_ms": p50, "p99_ms": p99, "throughput_rps": lat.size / duration_s,
            "slo_attainment": t.slo_met / answered if answered else None,
            "completed": int(lat.size), "rejected": t.rejected}


def _best_effort_work(workload: Workload, models: dict, profile: Profile) -> float:
    """Best-effort work done per second, in solo device-seconds: request rates of different
    models do not add up, the device time their requests need alone does."""
    total = 0.0
    for m in workload.models:
        if m.priority is Priority.REALTIME or m.name not in models:
            continue
        solo_s = sum(d.duration_us for d in profile.demands[m.name]) / 1e6
        total += models[m.name]["throughput_rps"] * solo_s
    return total


def simulate(workload: Workload, policies: list[str], processes: int = 1) -> dict:
    """Run every policy (and each realtime model alone). processes > 1 runs them in parallel
    worker processes (the CLI does; a library caller opts in, since spawned workers re-import
    the caller's __main__)."""
    with tempfile.TemporaryDirectory(prefix="edgesched-sim-") as tmp:
        paths = _prepare(workload, Path(tmp))
        probe = SimBackend(workload.device, STREAMS, seed=workload.seed + 1)
        profile = measure_profile(probe, _load(probe, workload, paths), workload.device,
                                  seed=workload.seed)
        result = {"simulated": True, "device": workload.device,
                  "duration_s": workload.duration_s, "seed": workload.seed,
                  "predictor_mape": profile.meta.get("predictor_mape"), "policies": {}}
        if any(m.slices == AUTO for m in workload.models):
            result["slices"] = slice_counts(workload)     # what `auto` chose
        # Independent runs: one process each, as many at once as there are cores.
        solos = [m.name for m in workload.models if m.priority is Priority.REALTIME]
        jobs = [(policy, None) for policy in policies] + [("fifo", {name}) for name in solos]
        args = [(workload, paths, policy, profile, only) for policy, only in jobs]
        if processes > 1:
            with ProcessPoolExecutor(min(len(jobs), processes),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                runs = list(pool.map(run_policy, *zip(*args)))
        else:
            runs = [run_policy(*a) for a in args]
        for policy, models in zip(policies, runs):
            result["policies"][policy] = {
                "models": models,
                "best_effort_work": _best_effort_work(workload, models, profile)}
        result["solo"] = {name: run[name] for name, run in zip(solos, runs[len(policies):])}
    return result


def format_report(result: dict) -> str:
    """Tables per policy, labelled simulated, with realtime p99 against solo and best-effort
    work against fifo where both are there."""
    from edgesched.commands.table import format_table
    lines = [f"SIMULATED on {result['device']}: {result['duration_s']:g} s, seed {result['seed']}"
             f" (predictor held-out error {_pct(result['predictor_mape'])})"]
    if "slices" in result:
        lines.append("slices (auto resolved): " + ", ".join(
            f"{name} {n}" for name, n in result["slices"].items()))
    fifo = result["policies"].get("fifo", {}).get("best_effort_work")
    for policy, body in result["policies"].items():
        rows = []
        for name, m in body["models"].items():
            solo = result["solo"].get(name, {}).get("p99_ms")
            rows.append([name, m["p50_ms"], m["p99_ms"],
                         None if solo is None or m["p99_ms"] is None else m["p99_ms"] / solo,
                         m["throughput_rps"], _pct(m["slo_attainment"]), m["completed"],
                         m["rejected"]])
        work = body["best_effort_work"]
        ratio = f", {work / fifo:.2f}x fifo" if fifo else ""
        lines += ["", f"policy {policy} (simulated): best-effort work {work:.3f} device-s/s"
                  f"{ratio}",
                  format_table(["model", "p50_ms", "p99_ms", "p99/solo", "req/s", "slo_met",
                                "completed", "rejected"], rows)]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
