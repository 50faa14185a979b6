"""A simulated Jetson GPU behind the Backend protocol, on a virtual clock.

Every launched slice is a fluid job. Alone it takes launch + compute + memory time
(sim_device.SliceWork). Together, jobs share the SMs (oversubscription stretches compute-bound
time; stream 0 has the high CUDA stream priority, which favours its blocks but does not
preempt resident ones) and DRAM (oversubscription stretches memory-bound time for everyone:
the EMC knows nothing of stream priorities), plus a cache/EMC term by which other jobs' traffic
slows memory-bound work even below saturation. Each launch draws a multiplicative noise.
The engine reads time from `now()`; `poll` advances it. Nothing here is visible to policies:
they see only what profiling measures through launches, probes and `telemetry()`.
Shapes: a model is costed at its inputs' `opt` shapes (the manifest's per-slice ranges for a
sliced directory, else `load(..., shapes=)`); a dynamic input without one is refused at load.
A request staged with other shapes (a batch of 4 within a range) runs and answers at its own
shapes, costed on first sight and cached.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from edgesched import dtypes
from edgesched.backends.base import Doorbell, LoadedModel
from edgesched.backends.sim_device import (
    SPECS,
    DeviceSpec,
    SliceWork,
    slice_work,
    work_from_demand,
)
from edgesched.backends.sim_jobs import (  # noqa: F401  (constants: sim.X for their users)
    CACHE_GAMMA,
    HIGH_PRIORITY_STREAM,
    PRIORITY_LEAK,
    Job,
    completion,
    contended,
)
from edgesched.errors import EdgeschedError, InvalidInput, ModelLoadError
from edgesched.modelfiles.costmodel import tensor_shapes
from edgesched.modelfiles.manifest import MANIFEST_NAME, Manifest, read_manifest
from edgesched.modelfiles.shaping import slice_shapes
from edgesched.shapes import ShapeRange, resolve
from edgesched.types import Completion, Launch, TensorSpec

NOISE_SIGMA = 0.03      # lognormal sigma of a launch's run time
NOISE_BATCH = 256       # noise factors drawn at once
CONTENTION_CACHED = 4096   # distinct running sets whose contention is kept
SHAPES_CACHED = 32      # per model: request shapes whose work and outputs are kept
SHAPE_HINT = ("`shapes: {{{name}: {list}}}` (a size for each ?) on the model in the config or "
              "workload file")


@dataclass
class _Source:
    """What a model was loaded from, to cost it again at a request's own input shapes."""

    path: Path
    manifest: Manifest | None
    opt: dict[str, tuple[int, ...]]                 # the shapes its default work is for
    graphs: list[onnx.ModelProto] | None = None     # loaded on the first other shape
    shaped: dict = field(default_factory=dict)      # shapes key -> (works, output shapes)
    opt_outputs: dict | None = None                 # output shapes at `opt`


def _specs_from_graph(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], ...]:
    inits = {t.name for t in model.graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        try:
            dtype = dtypes.from_onnx(t.elem_type).name
        except dtypes.UnsupportedDtype as e:    # load() names the file
            raise dtypes.UnsupportedDtype(f"tensor {v.name!r}: {e}") from None
        return TensorSpec(v.name, dtype,
                          tuple(d.dim_value if d.dim_value > 0 else None for d in t.shape.dim))
    return (tuple(spec(v) for v in model.graph.input if v.name not in inits),
            tuple(spec(v) for v in model.graph.output))


class SimBackend:
    name = "sim"

    def __init__(self, device: str | DeviceSpec, streams: int, seed: int = 0,
                 noise_sigma: float = NOISE_SIGMA, realtime: bool = False,
                 outputs: bool = True):
        """realtime=False: virtual time jumps from event to event (simulate, tests).
        realtime=True: virtual time is time.monotonic() and poll really waits, so a server
        can run on the simulated device and clients see its latencies."""
        if isinstance(device, str):
            if device not in SPECS:
                raise ModelLoadError(f"unknown simulated device {device!r}; one of "
                                     + ", ".join(SPECS))
            device = SPECS[device]
        # (a DeviceSpec argument may be any device, e.g. spec_for() of a profiled CPU)
        self.spec = device
        self.num_streams = streams
        self._rng = random.Random(seed)     # per-launch draws: Python's is ~10x cheaper here
        self._sigma = noise_sigma
        self._noises: list[float] = []      # drawn ahead, next one last (`_noise`)
        self._realtime = realtime
        self._make_outputs = outputs     # False: fetch returns {} (simulate reads no tensors)
        self._doorbell = Doorbell()         # real time: a ring ends a poll's sleep early
        self._ready: list[Completion] = []     # real time: found while catching up, unreported
        self._now = time.monotonic() if realtime else 0.0
        self._telemetry_since = self._now
        self._work: dict[str, list[SliceWork]] = {}
        self._outputs: dict[str, tuple[TensorSpec, ...]] = {}
        self._staged: dict[int, str] = {}
        self._sources: dict[str, _Source] = {}
        # request id -> its own (works, output shapes) when staged at other shapes than opt
        self._request_shapes: dict[int, tuple[list[SliceWork], dict]] = {}
        self._jobs: dict[int, Job] = {}          # stream (or -1 - probe id) -> job
        # _durations() while the set of jobs is unchanged (None: recompute): contention
        # depends only on who runs, and most polls see the same set as the one before.
        self._durations_now: list[float] | None = None
        # Job.sig (stream, id(work)) per job, in order -> contended(): the same few sets
        # recur.
        self._contention: dict[tuple, tuple] = {}
        self._load_now = (0.0, 0.0)    # (SM busy, bandwidth) of the jobs in _durations_now
        self._probe_ids = 0
        self._busy_integral = self._traffic_integral = 0.0   # for telemetry()
        self._slowdowns: list[tuple[float, float]] = []     # (from virtual s, time factor)

    # --- the clock ----------------------------------------------------------------------------
    def now(self) -> float:
        return self._now

    def slow_down(self, factor: float, at_s: float) -> None:
        """From virtual time `at_s` on, every job takes `factor` times as long (a lower clock,
        a power-mode change, throttling): a test hook for what the profile cannot know. The
        factor applies to what is left of jobs running at `at_s`, so takes effect within one
        slice; calls multiply."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"slow_down factor must be a positive number, got {factor!r}")
        self._slowdowns.append((at_s, factor))

    def _time_factor(self) -> float:
        factor = 1.0
        for at_s, f in self._slowdowns:
            if self._now >= at_s:
                factor *= f
        return factor

    # --- loading ------------------------------------------------------------------------------
    def load(self, model: str, path: Path, instances: int, *,
             shapes: Mapping[str, ShapeRange] | None = None) -> LoadedModel:
        """`shapes`: the model inputs' shapes or ranges (config/workload `shapes:`); a sliced
        directory's manifest supplies them when not given. Costed at `opt`."""
        path = Path(path)
        manifest = None
        try:
            if path.is_dir():
                if not (path / MANIFEST_NAME).is_file():
                    raise ModelLoadError(f"{path}: a directory without {MANIFEST_NAME}")
                manifest = read_manifest(path)
                inputs, outputs = manifest.inputs, manifest.outputs
                resolved = resolve(model, inputs, shapes or manifest.shapes, SHAPE_HINT)
                graphs = [onnx.load(str(manifest.slice_path(s))) for s in manifest.slices]
                per_slice = slice_shapes(manifest, resolved, graphs)
            else:
                graphs = [onnx.load(str(path))]
                inputs, outputs = _specs_from_graph(graphs[0])
                resolved = resolve(model, inputs, shapes, SHAPE_HINT)
                per_slice = [resolved]
            works = [slice_work(g, self.spec, s) for g, s in zip(graphs, per_slice)]
        except EdgeschedError:
            raise
        except Exception as e:   # protobuf/IO errors: one line naming the file
            raise ModelLoadError(f"{path}: cannot load it for simulation: "
                                 f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
        self._sources[model] = _Source(path, manifest, {k: r.opt for k, r in resolved.items()})
        return self.load_work(model, works, inputs, outputs)

    def _at_shapes(self, model: str, inputs: Mapping[str, np.ndarray]
                   ) -> tuple[list[SliceWork], dict[str, tuple[int, ...]]] | None:
        """(works, output shapes) of `model` for a request's tensors; None at the shapes it
        was loaded for (or a model loaded from work or a profile: one cost for all)."""
        source = self._sources.get(model)
        got = {name: tuple(a.shape) for name, a in inputs.items()}
        if source is None or got == source.opt:
            return None
        key = tuple(sorted(got.items()))
        if key not in source.shaped:
            if len(source.shaped) >= SHAPES_CACHED:
                source.shaped.pop(next(iter(source.shaped)))
            source.shaped[key] = self._cost(model, source, got)
        return source.shaped[key]

    def _cost(self, model: str, source: _Source, got: dict[str, tuple[int, ...]]
              ) -> tuple[list[SliceWork], dict[str, tuple[int, ...]]]:
        if source.graphs is None:
            files = ([source.manifest.slice_path(e) for e in source.manifest.slices]
                     if source.manifest else [source.path])
            source.graphs = [onnx.load(str(f)) for f in files]
        fixed = {name: ShapeRange.fixed_at(shape) for name, shape in got.items()}
        per_slice = (slice_shapes(source.manifest, fixed, source.graphs) if source.manifest
                     else [fixed])
        works = [slice_work(g, self.spec, s) for g, s in zip(source.graphs, per_slice)]
        known: dict[str, tuple] = dict(got)
        for g, s in zip(source.graphs, per_slice):
            known.update(tensor_shapes(g, s))
        return works, {t.name: known[t.name] for t in self._outputs[model] if t.name in known}

    def solo_us(self, model: str) -> float:
        """A loaded model's solo time, all slices, microseconds (its simulated ground truth:
        for sizing slices, never read by the scheduler)."""
        return sum(w.duration_us for w in self._work[model])

    def load_profiled(self, model: str, demands, inputs=(), outputs=()) -> LoadedModel:
        """A model known only by its measured profile (a SliceDemand per slice): the second
        mode, in which the simulated device is the one calibration measured."""
        return self.load_work(model, [work_from_demand(d) for d in demands], inputs, outputs)

    def load_work(self, model: str, works: list[SliceWork], inputs=(), outputs=()) -> LoadedModel:
        """A model given by its slices' work directly (e.g. built from a measured profile)."""
        self._work[model] = list(works)
        self._outputs[model] = tuple(outputs)
        return LoadedModel(tuple(inputs), tuple(outputs), len(works))

    def footprint_bytes(self, model: str) -> int:
        """Weights + activations from its graphs (sim_footprint.py); 0 for a model loaded
        from work or a profile: it has no graph to read them from."""
        from edgesched.backends import sim_footprint
        source = self._sources.get(model)
        return 0 if source is None else sim_footprint.model_bytes(source.path, source.manifest,
                                                                  source.opt)

    def unload(self, model: str) -> None:
        for held in (self._work, self._outputs, self._sources):
            held.pop(model, None)

    # --- running ------------------------------------------------------------------------------
    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        try:
            shaped = self._at_shapes(model, inputs) if inputs else None
        except Exception as e:   # shape inference refuses these shapes: the request's fault
            raise InvalidInput(f"model {model!r}: cannot run at input shapes "
                               + ", ".join(f"{n}:{tuple(a.shape)}" for n, a in inputs.items())
                               + f": {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        self._staged[request_id] = model
        if shaped is not None:
            self._request_shapes[request_id] = shaped

    def launch(self, launch: Launch) -> None:
        if self._realtime:
            self._catch_up()          # it starts now, beside whatever is still running now
        if launch.stream in self._jobs:
            raise RuntimeError(f"stream {launch.stream} is busy")
        shaped = self._request_shapes.get(launch.request_id) if self._request_shapes else None
        work = (shaped[0] if shaped else self._work[launch.model])[launch.slice_index]
        noises = self._noises       # _noise(), its common case inline (once per launch)
        stream = launch.stream
        self._jobs[stream] = Job(launch, work, self._now,
                                 noises.pop() if noises else self._noise(), stream)
        self._durations_now = None

    def launch_probe(self, sm: float, mem: float, seconds: float) -> int:
        """A synthetic kernel of known footprint (calibration probes), on its own stream."""
        self._probe_ids += 1
        key = -self._probe_ids
        work = SliceWork(0.0, seconds * 1e6 * (1 - min(mem, 1.0)), seconds * 1e6 * min(mem, 1.0),
                         sm, mem, 1, sm, mem)
        self._jobs[key] = Job(None, work, self._now, 1.0, key)
        self._durations_now = None
        return key

    def stop_probe(self, key: int) -> None:
        self._jobs.pop(key, None)
        self._durations_now = None

    def _noise(self) -> float:
        """The next launch's noise factor. Drawn NOISE_BATCH at a time (the same draws in
        the same order as one by one: only launches use this generator)."""
        if not self._sigma:
            return 1.0
        if not self._noises:
            gauss, sigma, exp = self._rng.gauss, self._sigma, math.exp
            self._noises = [exp(gauss(0.0, sigma)) for _ in range(NOISE_BATCH)]
            self._noises.reverse()          # pop() from the end takes them in drawn order
        return self._noises.pop()

    def poll(self, timeout_s: float) -> list[Completion]:
        """Advance virtual time to the next completion, or by timeout_s if none comes sooner."""
        if self._realtime:
            return self._poll_realtime(timeout_s)
        return self._poll_until(self._now + (timeout_s if timeout_s > 0.0 else 0.0))

    def _poll_realtime(self, timeout_s: float) -> list[Completion]:
        """Sleep (a doorbell ring ends it) until the next completion is due in wall time."""
        self._catch_up()
        if not self._ready:
            durations = self._durations()
            due = [j.remaining * d for j, d in zip(self._jobs.values(), durations) if j.launch]
            wait = min([timeout_s, *due]) if due else timeout_s
            self._doorbell.wait(wait)
            self._catch_up()
        ready, self._ready = self._ready, []
        return ready

    def _catch_up(self) -> None:
        """Advance virtual time to the wall clock, keeping every completion on the way."""
        while batch := self._poll_until(max(time.monotonic(), self._now)):
            self._ready.extend(batch)

    def _poll_until(self, target: float) -> list[Completion]:
        """Advance to the first completion (or to `target`): once per engine step, so kept
        to one pass over the jobs to find it and one to advance them and collect what
        ended (the same float operations, in the same order, as `_advance`)."""
        jobs = self._jobs
        durations = self._durations_now
        if durations is None or self._slowdowns:
            durations = self._durations()
        step = first = None         # the earliest end among launches (ties: lowest key)
        for (k, j), d in zip(jobs.items(), durations):
            if j.launch is not None:
                t = j.remaining * d
                if step is None or t < step or (t == step and k < first):
                    step, first = t, k
        if step is None or self._now + step > target:
            self._advance(target - self._now, durations)
            return []
        ended = []
        if step > 0:
            for (k, job), d in zip(jobs.items(), durations):
                job.remaining -= step / d
                if job.launch is not None and (k == first or job.remaining <= 1e-12):
                    ended.append(k)
            busy, traffic = self._load_now
            self._busy_integral += busy * step
            self._traffic_integral += traffic * step
            self._now += step
        else:
            ended = [k for k, j in jobs.items()
                     if j.launch is not None and (k == first or j.remaining <= 1e-12)]
        now = self._now
        out = []
        for k in ended:
            job = jobs.pop(k)
            out.append(completion(job.launch, job.started_s, now))
        self._durations_now = None
        return out

    def _advance(self, dt: float, durations: list[float]) -> None:
        if dt <= 0:
            return
        for job, d in zip(self._jobs.values(), durations):
            job.remaining -= dt / d
        busy, traffic = self._load_now
        self._busy_integral += busy * dt
        self._traffic_integral += traffic * dt
        self._now += dt

    def _durations(self) -> list[float]:
        """Each job's current total duration in seconds, given who runs beside it now, in the
        order of `_jobs`. Contention depends only on which works run on which streams (in
        which order: float sums), so each such set's solo-scale durations are computed once
        (`contended`) and only each launch's noise and any slow-down apply per call."""
        if self._durations_now is not None and not self._slowdowns:
            return self._durations_now
        jobs = self._jobs
        sig = tuple([j.sig for j in jobs.values()])
        found = self._contention.get(sig)
        if found is None:
            if len(self._contention) >= CONTENTION_CACHED:
                self._contention.clear()
            found = self._contention[sig] = contended(
                list(jobs.values()), self.spec.stream_priorities)
        self._load_now = found[1]
        if self._slowdowns:
            slowed = self._time_factor()
            out = [s if (s := b * (j.scale * slowed)) > 1e-9 else 1e-9
                   for j, b in zip(jobs.values(), found[0])]
        else:   # scale * 1.0 is scale: the same floats as with a factor
            out = [s if (s := b * j.scale) > 1e-9 else 1e-9
                   for j, b in zip(jobs.values(), found[0])]
        self._durations_now = out
        return out

    def telemetry(self) -> tuple[float, float]:
        """(GPU SM busy fraction, EMC utilization fraction) averaged since the last call, as
        a jtop/sysfs reader would report them on a Jetson."""
        span = self._now - self._telemetry_since
        reading = ((self._busy_integral / span, self._traffic_integral / span) if span > 0
                   else (0.0, 0.0))
        self._busy_integral = self._traffic_integral = 0.0
        self._telemetry_since = self._now
        return reading

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        """Simulated outputs are zeros of the model's output shapes: inferred from the
        request's input shapes where they differ from opt, else as declared (dynamic dims as
        1, a model loaded without a graph)."""
        model = self._staged.pop(request_id)
        shaped = self._request_shapes.pop(request_id, None)
        if not self._make_outputs:
            return {}
        inferred = shaped[1] if shaped else self._default_outputs(model)
        return {t.name: np.zeros(inferred.get(t.name) or [d or 1 for d in t.shape], t.dtype)
                for t in self._outputs[model]}

    def _default_outputs(self, model: str) -> dict[str, tuple[int, ...]]:
        """The output shapes at the shapes the model was loaded for (inferred once)."""
        source = self._sources.get(model)
        if source is None:
            return {}
        if source.opt_outputs is None:
            source.opt_outputs = self._cost(model, source, source.opt)[1]
        return source.opt_outputs

    def release(self, request_id: int) -> None:
        self._staged.pop(request_id, None)
        self._request_shapes.pop(request_id, None)

    def bind(self, doorbell: Doorbell) -> None:
        """A ring ends a real-time poll's sleep early (the virtual clock never sleeps)."""
        self._doorbell = doorbell

    def close(self) -> None:
        self._jobs.clear()
        self._durations_now = None
