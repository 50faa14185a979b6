"""CPU execution of ONNX models and slices with ONNX Runtime: the embedded default backend.

Each stream is a worker thread. `InferenceSession.run` releases the GIL, so streams run
concurrently on separate cores. One session per (model, slice), shared by all streams
(ONNX Runtime sessions are safe to run from several threads at once). A short launch that
would run alone runs on the engine's thread instead, inside its next poll (ort_inline.py): a
request through the server then crosses no thread at all.

Calibration hooks (the same ones the simulated and TensorRT backends offer, so
`edgesched.commands.measure` runs unchanged here):
- `launch_probe(sm, mem, seconds)` / `stop_probe(key)`: CPU probes from cpu_probes.py, a
  compute probe on `sm` of the cores and a DRAM-streaming probe on `mem` of them. They run in
  their own threads on their own arrays and never touch request state or the stream workers.
- `telemetry()`: (CPU busy fraction of all cores, memory bandwidth fraction) since the last
  call. The busy fraction comes from /proc/stat (system-wide, like a Jetson's GPU load)
  when the window spans enough clock ticks (10 ms each) to resolve it, else from this
  process's own CPU time (procstat.BusyWindow).
  The bandwidth fraction is NOT a hardware reading: without perf/uncore counters a CPU does
  not say how many bytes went to DRAM. It is the traffic this backend's own memory probes
  streamed in the window (which it counts exactly) over the peak streaming bandwidth its
  memory probe reached on all cores (self-calibrated once, on the first memory probe, or by
  `calibrate_probes()`). Slices' own DRAM traffic is invisible to it and counts as 0, so it
  is a lower bound, and 0.0 whenever no memory probe ran.
- A request staged with no tensors at all (`stage(id, model, {})`, which is how calibration
  stages its runs) is a synthetic run: every slice's inputs that the request does not hold
  are zeros at the `opt` of the model's shapes (`load(..., shapes=)`, else a sliced
  directory's manifest), carried through the slices; where no shape is known, the declared
  shapes with dynamic dimensions as 1 (calibrate refuses such a model before it gets here).
  Requests staged with tensors behave exactly as before (a missing tensor fails the launch).
Serving takes whatever shapes the model accepts; the server refuses those outside a
configured range before they reach this backend (ModelInfo.check_inputs).
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from edgesched import dtypes
from edgesched.backends import cpu_probes, ort_footprint, ort_inline
from edgesched.backends.base import Doorbell, LoadedModel
from edgesched.backends.blobs import Blobs
from edgesched.errors import BackendUnavailable, ModelLoadError
from edgesched.modelfiles.manifest import MANIFEST_NAME, read_manifest
from edgesched.modelfiles.shaping import slice_shapes
from edgesched.shapes import ShapeError, ShapeRange, resolve
from edgesched.telemetry import procstat
from edgesched.types import Completion, Launch, TensorSpec


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'edgesched[cpu]'") \
            from None
    return onnxruntime


def _spec(arg) -> TensorSpec:
    try:
        dtype = dtypes.from_ort(arg.type).name
    except dtypes.UnsupportedDtype as e:
        raise ModelLoadError(f"tensor {arg.name!r}: {e}") from None
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


class _Slice:
    __slots__ = ("session", "inputs", "outputs", "shapes", "_zeros", "inline")

    def __init__(self, session, inputs: tuple[str, ...], outputs: list[str],
                 inline: bool = False):
        self.session, self.inputs, self.outputs = session, inputs, outputs
        self.inline = inline      # may run on the engine's thread (ort_inline.py)
        self.shapes: dict[str, tuple[int, ...]] = {}     # input -> zeros' shape (opt)
        self._zeros: dict[str, np.ndarray] | None = None

    def zeros(self) -> dict[str, np.ndarray]:
        """Zero tensors for every input of this slice (synthetic/calibration runs); built
        once, read-only, shared by every stream."""
        if self._zeros is None:
            zeros = {}
            for arg in self.session.get_inputs():
                spec = _spec(arg)
                array = np.zeros(self.shapes.get(spec.name) or [d or 1 for d in spec.shape],
                                 spec.dtype)
                array.flags.writeable = False
                zeros[spec.name] = array
            self._zeros = zeros
        return self._zeros


def _synthetic_shapes(model: str, slices: list[_Slice], loaded: LoadedModel, manifest,
                      shapes: Mapping[str, ShapeRange] | None) -> None:
    """Give each slice the `opt` shapes its synthetic inputs take, where they are known."""
    try:
        given = shapes or (manifest.shapes if manifest is not None else None)
        resolved = resolve(model, loaded.inputs, given)
        per_slice = slice_shapes(manifest, resolved) if manifest is not None else [resolved]
    except ShapeError:   # a dynamic input without a shape: serving does not need one
        return
    for piece, ranges in zip(slices, per_slice):
        piece.shapes = {name: r.opt for name, r in ranges.items()}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, streams: int, threads_per_stream: int = 1, *,
                 root: str | os.PathLike = "/"):
        """`root`: the filesystem root /proc/stat is read under (tests point it at fixtures)."""
        self._ort = _import_ort()
        self.num_streams = streams
        self._threads_per_stream = threads_per_stream
        self._slices: dict[str, list[_Slice]] = {}
        self._outputs: dict[str, tuple[str, ...]] = {}
        self._footprints: dict[str, ort_footprint.Measured] = {}    # model -> its load's
        self.blobs: Blobs | None = None    # model files kept in host RAM (serve/residency.py)
        # request id -> (model, its live tensors: inputs, then every slice's outputs,
        #                synthetic: staged with no tensors, so missing inputs are zeros)
        self._tensors: dict[int, tuple[str, dict[str, np.ndarray], bool]] = {}
        self._done = Doorbell()        # rung with each finished launch; the engine's once bound
        self._in_flight = 0            # launched, not yet returned by poll (engine thread)
        self._inline: Launch | None = None       # kept for the next poll (launch)
        self._runs = ort_inline.InlineRuns()     # which launches may run inline
        self._scanned: dict[tuple, bool] = {}    # (file, mtime, size) -> _inline_ok's answer
        self._work = [queue.SimpleQueue() for _ in range(streams)]
        self._workers = [threading.Thread(target=self._serve_stream, args=(s,), daemon=True,
                                          name=f"edgesched-stream-{s}") for s in range(streams)]
        for w in self._workers:
            w.start()
        # calibration probes and telemetry (never touch the request state above)
        self._probes: dict[int, cpu_probes.CpuProbe] = {}
        self._probe_keys = itertools.count(1)
        self._probe_lock = threading.Lock()
        self._retired_probe_bytes = 0          # bytes moved by probes already stopped
        self._peak_stream_gbs: float | None = None
        self._busy = procstat.BusyWindow(root)
        self._window_bytes = 0
        self._window_s = time.monotonic()

    # --- loading ----------------------------------------------------------------------------
    def _session(self, path: Path):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self._threads_per_stream
        options.inter_op_num_threads = 1
        options.log_severity_level = 3          # errors only: warnings go to our logs, not stderr
        # Under a memory budget the file is kept in host RAM (blobs.py) and the session is
        # made from that copy: a model reloaded after an eviction skips the disk.
        source = str(path) if self.blobs is None else self.blobs.source(path)
        try:
            return self._ort.InferenceSession(source, options,
                                              providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {first}") from None

    def _inline_ok(self, path: Path) -> bool:
        """No data-dependent control flow in the file (read from RAM's copy if kept): scanned
        once per file version, not again at every reload after an eviction."""
        try:
            info = os.stat(path)
            key = (Path(path).resolve(), info.st_mtime_ns, info.st_size)
        except OSError:
            key = None              # gone from the disk: RAM's copy, scanned each time
        ok = self._scanned.get(key) if key is not None else None
        if ok is None:
            source = path if self.blobs is None else self.blobs.source(path)
            try:
                ok = not ort_inline.data_dependent(source)
            except OSError:
                ok = False
            if key is not None:
                self._scanned[key] = ok
        return ok

    def load(self, model: str, path: Path, instances: int, *,
             shapes: Mapping[str, ShapeRange] | None = None) -> LoadedModel:
        """`shapes`: what synthetic (calibration) runs feed, at `opt`; requests are not
        limited by them here (the server checks configured ranges)."""
        path = Path(path)
        manifest = None
        if self.blobs is not None:        # under a budget: measure this model, not ORT's setup
            ort_footprint.settle(self._ort)
        rss_before = ort_footprint.rss_bytes()
        if path.is_dir():
            loaded, slices, manifest = self._load_sliced(path)
        elif path.suffix in (".engine", ".plan", ".trt"):
            raise ModelLoadError(f"{path}: a TensorRT engine; the onnxruntime backend needs a "
                                 ".onnx file or a sliced directory with manifest.json")
        elif path.is_file() or (self.blobs is not None and path in self.blobs):  # kept bytes
            session = self._session(path)
            inputs = tuple(_spec(a) for a in session.get_inputs())
            outputs = tuple(_spec(a) for a in session.get_outputs())
            slices = [_Slice(session, tuple(t.name for t in inputs), [t.name for t in outputs],
                             self._inline_ok(path))]
            loaded = LoadedModel(inputs, outputs, 1)
        else:
            raise ModelLoadError(f"{path}: no such file or directory")
        _synthetic_shapes(model, slices, loaded, manifest, shapes)
        files = [manifest.slice_path(e) for e in manifest.slices] if manifest else [path]
        self._footprints[model] = ort_footprint.Measured(rss_before, files, self.blobs)
        self._slices[model] = slices
        self._outputs[model] = tuple(t.name for t in loaded.outputs)
        return loaded

    def footprint_bytes(self, model: str) -> int:
        """RSS growth while its sessions were made, at least its weights (ort_footprint.py)."""
        return self._footprints[model].bytes()

    def unload(self, model: str) -> None:
        self._runs.forget(model)
        self._footprints.pop(model, None)
        self._slices.pop(model, None)        # its sessions close when the last reference goes
        self._outputs.pop(model, None)

    def _load_sliced(self, directory: Path):
        if not (directory / MANIFEST_NAME).is_file():
            raise ModelLoadError(f"{directory}: a directory without {MANIFEST_NAME}")
        manifest = read_manifest(directory)
        slices = []
        for entry in manifest.slices:
            session = self._session(manifest.slice_path(entry))
            have_in = {a.name for a in session.get_inputs()}
            have_out = {a.name for a in session.get_outputs()}
            if have_in != set(entry.inputs) or not set(entry.outputs) <= have_out:
                raise ModelLoadError(f"{manifest.slice_path(entry)}: its inputs/outputs do not "
                                     f"match slices[{entry.index}] in {MANIFEST_NAME}")
            slices.append(_Slice(session, entry.inputs, list(entry.outputs),
                                 self._inline_ok(manifest.slice_path(entry))))
        return LoadedModel(manifest.inputs, manifest.outputs, len(slices)), slices, manifest

    # --- running ----------------------------------------------------------------------------
    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        shapes = tuple(a.shape for a in inputs.values())
        self._tensors[request_id] = (model, dict(inputs), not inputs, shapes)

    def launch(self, launch: Launch) -> None:
        # Engine thread only. A short launch with nothing else in flight is kept for this
        # thread's next poll (_inline); any other goes to its stream's worker, and so does a
        # kept one that another launch now joins (they run side by side, as planned).
        kept = self._inline
        if kept is not None:
            self._inline = None
            self._work[kept.stream].put(kept)
        elif self._in_flight == 0 and self._short(launch):
            self._inline = launch
            self._in_flight = 1
            return
        self._work[launch.stream].put(launch)
        self._in_flight += 1

    def _short(self, launch: Launch) -> bool:
        entry = self._tensors.get(launch.request_id)
        pieces = self._slices.get(launch.model)
        return entry is not None and pieces is not None and \
            pieces[launch.slice_index].inline and \
            self._runs.allowed((launch.model, launch.slice_index, entry[3]))

    def _serve_stream(self, stream: int) -> None:
        work = self._work[stream]
        while True:
            launch = work.get()
            if launch is None:
                return
            self._done.ring(self._run(launch))

    def _run(self, launch: Launch) -> Completion:
        """One slice of one request, on the calling thread (a stream worker, or the engine's
        for a launch kept inline)."""
        start = time.monotonic()
        error, rejected = None, False
        try:
            piece = self._slices[launch.model][launch.slice_index]
            _, tensors, synthetic, shapes = self._tensors[launch.request_id]
            if synthetic:
                zeros = piece.zeros()
                feed = {n: tensors[n] if n in tensors else zeros[n] for n in piece.inputs}
            else:
                feed = {n: tensors[n] for n in piece.inputs}
            results = piece.session.run(piece.outputs, feed)
            tensors.update(zip(piece.outputs, results))
        except Exception as e:  # a failing slice fails only its own request
            text = str(e).strip()
            error = f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"
            # ORT on the CPU has no device to fail: an exception is the graph refusing
            # these inputs, except running out of memory (the host's fault, not theirs).
            rejected = not isinstance(e, MemoryError)
        end = time.monotonic()
        if error is None:
            self._runs.ran((launch.model, launch.slice_index, shapes), end - start)
        return Completion(launch, start, end, error, rejected=rejected)

    def poll(self, timeout_s: float) -> list[Completion]:
        kept, self._inline = self._inline, None
        if kept is None:
            completions = self._done.wait(timeout_s)
        else:
            completions = [self._run(kept), *self._done.wait(0.0)]
        self._in_flight -= len(completions)
        return completions

    def bind(self, doorbell: Doorbell) -> None:
        self._done = doorbell

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        model, tensors, _, _ = self._tensors.pop(request_id)
        return {n: tensors[n] for n in self._outputs[model]}

    def release(self, request_id: int) -> None:
        self._tensors.pop(request_id, None)

    # --- calibration: probes and telemetry ---------------------------------------------------
    def launch_probe(self, sm: float, mem: float, seconds: float) -> int:
        """Start a probe: compute threads on `sm` (0..1) of the cores, DRAM-streaming threads
        on `mem` (0..1) of them. Returns once every probe thread is running; it stops by itself
        after `seconds` (a safety cap) if `stop_probe` is not called first."""
        if mem > 0 and self._peak_stream_gbs is None:     # telemetry's reference, once
            self._peak_stream_gbs = cpu_probes.measure_stream_gbs(0.2) or None
        with self._probe_lock:
            self._reap_probes()
            key = next(self._probe_keys)
            probe = cpu_probes.CpuProbe(sm, mem, seconds,
                                        name=f"{cpu_probes.THREAD_PREFIX}-{key}")
            self._probes[key] = probe
        try:
            probe.start()
        except Exception:
            with self._probe_lock:
                self._probes.pop(key, None)
            raise
        return key

    def stop_probe(self, key: int) -> None:
        """Stop a probe and wait for its threads (idempotent; unknown keys are ignored)."""
        with self._probe_lock:
            probe = self._probes.pop(key, None)
        if probe is not None:
            self._retire(probe)

    def _retire(self, probe: cpu_probes.CpuProbe) -> None:
        stats = probe.stop()
        with self._probe_lock:
            self._retired_probe_bytes += stats.bytes_moved

    def _reap_probes(self) -> None:
        """Forget probes whose safety cap ended them (called with the lock held)."""
        for key in [k for k, p in self._probes.items() if not p.running]:
            probe = self._probes.pop(key)
            self._retired_probe_bytes += probe.stop().bytes_moved

    def _probe_bytes(self) -> int:
        with self._probe_lock:
            return self._retired_probe_bytes + sum(p.stats().bytes_moved
                                                   for p in self._probes.values())

    def calibrate_probes(self, seconds: float = 0.2) -> cpu_probes.ProbeCalibration:
        """Measure what the probes achieve alone at full footprint (GFLOP/s, GB/s) and keep the
        streaming figure as the peak bandwidth telemetry's fraction is relative to. Run it
        while nothing else runs (the first memory probe measures the peak by itself)."""
        calibration = cpu_probes.calibrate(seconds)
        self._peak_stream_gbs = calibration.stream_gbs or None
        return calibration

    def telemetry(self) -> tuple[float, float]:
        """(CPU busy fraction over all cores, memory bandwidth fraction) since the last call
        (the first call: since the backend was made). Both are in [0, 1]; see the module
        docstring for what the bandwidth fraction can and cannot see."""
        now = time.monotonic()
        busy = self._busy.read()
        moved = self._probe_bytes()
        span = now - self._window_s
        bandwidth = 0.0
        if span > 0 and moved > self._window_bytes and self._peak_stream_gbs:
            gbs = (moved - self._window_bytes) / span / 1e9
            bandwidth = min(max(gbs / self._peak_stream_gbs, 0.0), 1.0)
        self._window_bytes, self._window_s = moved, now
        return busy, bandwidth

    def close(self) -> None:
        with self._probe_lock:
            probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            self._retire(probe)
        for work in self._work:
            work.put(None)
        for w in self._workers:
            w.join(timeout=5.0)
