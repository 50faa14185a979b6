"""CPU execution of ONNX models and slices with ONNX Runtime: the embedded default backend.

Each stream is a worker thread. `InferenceSession.run` releases the GIL, so streams run
concurrently on separate cores. One session per (model, slice), shared by all streams
(ONNX Runtime sessions are safe to run from several threads at once).
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from edgesched.backends.base import LoadedModel
from edgesched.errors import BackendUnavailable, ModelLoadError
from edgesched.manifest import MANIFEST_NAME, read_manifest
from edgesched.types import Completion, Launch, TensorSpec

# ONNX Runtime's type strings -> numpy dtype names (the tensor element types we serve).
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}
_WAKE = object()


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'edgesched[cpu]'") \
            from None
    return onnxruntime


def _spec(arg) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


class _Slice:
    __slots__ = ("session", "inputs", "outputs")

    def __init__(self, session, inputs: tuple[str, ...], outputs: list[str]):
        self.session, self.inputs, self.outputs = session, inputs, outputs


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, streams: int, threads_per_stream: int = 1):
        self._ort = _import_ort()
        self.num_streams = streams
        self._threads_per_stream = threads_per_stream
        self._slices: dict[str, list[_Slice]] = {}
        self._outputs: dict[str, tuple[str, ...]] = {}
        # request id -> (model, its live tensors: inputs, then every slice's outputs)
        self._tensors: dict[int, tuple[str, dict[str, np.ndarray]]] = {}
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._work = [queue.SimpleQueue() for _ in range(streams)]
        self._workers = [threading.Thread(target=self._serve_stream, args=(s,), daemon=True,
                                          name=f"edgesched-stream-{s}") for s in range(streams)]
        for w in self._workers:
            w.start()

    # --- loading ----------------------------------------------------------------------------
    def _session(self, path: Path):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self._threads_per_stream
        options.inter_op_num_threads = 1
        options.log_severity_level = 3          # errors only: warnings go to our logs, not stderr
        try:
            return self._ort.InferenceSession(str(path), options,
                                              providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {first}") from None

    def load(self, model: str, path: Path, instances: int) -> LoadedModel:
        path = Path(path)
        if path.is_dir():
            loaded, slices = self._load_sliced(path)
        elif path.suffix in (".engine", ".plan", ".trt"):
            raise ModelLoadError(f"{path}: a TensorRT engine; the onnxruntime backend needs a "
                                 ".onnx file or a sliced directory with manifest.json")
        elif path.is_file():
            session = self._session(path)
            inputs = tuple(_spec(a) for a in session.get_inputs())
            outputs = tuple(_spec(a) for a in session.get_outputs())
            slices = [_Slice(session, tuple(t.name for t in inputs), [t.name for t in outputs])]
            loaded = LoadedModel(inputs, outputs, 1)
        else:
            raise ModelLoadError(f"{path}: no such file or directory")
        self._slices[model] = slices
        self._outputs[model] = tuple(t.name for t in loaded.outputs)
        return loaded

    def _load_sliced(self, directory: Path) -> tuple[LoadedModel, list[_Slice]]:
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
            slices.append(_Slice(session, entry.inputs, list(entry.outputs)))
        return LoadedModel(manifest.inputs, manifest.outputs, len(slices)), slices

    # --- running ----------------------------------------------------------------------------
    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        self._tensors[request_id] = (model, dict(inputs))

    def launch(self, launch: Launch) -> None:
        self._work[launch.stream].put(launch)

    def _serve_stream(self, stream: int) -> None:
        work = self._work[stream]
        while True:
            launch = work.get()
            if launch is None:
                return
            start = time.monotonic()
            error = None
            try:
                piece = self._slices[launch.model][launch.slice_index]
                tensors = self._tensors[launch.request_id][1]
                results = piece.session.run(piece.outputs, {n: tensors[n] for n in piece.inputs})
                tensors.update(zip(piece.outputs, results))
            except Exception as e:  # a failing slice fails only its own request
                text = str(e).strip()
                error = f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"
            self._done.put(Completion(launch, start, time.monotonic(), error))

    def poll(self, timeout_s: float) -> list[Completion]:
        try:
            first = self._done.get(timeout=max(timeout_s, 0.0)) if timeout_s > 0 \
                else self._done.get_nowait()
        except queue.Empty:
            return []
        items = [first]
        while True:
            try:
                items.append(self._done.get_nowait())
            except queue.Empty:
                break
        return [c for c in items if c is not _WAKE]

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        model, tensors = self._tensors.pop(request_id)
        return {n: tensors[n] for n in self._outputs[model]}

    def release(self, request_id: int) -> None:
        self._tensors.pop(request_id, None)

    def wake(self) -> None:
        self._done.put(_WAKE)

    def close(self) -> None:
        for work in self._work:
            work.put(None)
        for w in self._workers:
            w.join(timeout=5.0)
