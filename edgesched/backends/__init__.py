"""Device backends, all behind the Backend protocol in base.py. Each heavy library is
imported only inside its own module, and that module is imported only when chosen."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable, Mapping, Protocol

from edgesched.backends.base import Backend, LoadedModel
from edgesched.errors import BackendUnavailable
from edgesched.sched.batching import check_batchable
from edgesched.shapes import ShapeRange, check
from edgesched.types import BackendName, ModelInfo, Priority


def resolve_backend_name(name: BackendName) -> BackendName:
    """`auto`: TensorRT when its backend can run here, else ONNX Runtime on the CPU."""
    if name is not BackendName.AUTO:
        return name
    if importlib.util.find_spec("tensorrt") is not None and _tensorrt_runtime_ready():
        return BackendName.TENSORRT
    return BackendName.ONNXRUNTIME


def _tensorrt_runtime_ready() -> bool:
    """Serving on TensorRT needs our runtime backend and pycuda beside tensorrt (a Jetson
    with JetPack's tensorrt but no pycuda yet serves on ONNX Runtime rather than failing)."""
    from edgesched.backends import tensorrt  # imports tensorrt itself only when used
    return hasattr(tensorrt, "TensorRTBackend") and \
        importlib.util.find_spec("pycuda") is not None


def create_backend(name: BackendName, streams: int, cpu_threads_per_stream: int = 1,
                   sim_device: str = "orin-nano") -> Backend:
    name = resolve_backend_name(name)
    if name is BackendName.ONNXRUNTIME:
        from edgesched.backends.onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(streams, cpu_threads_per_stream)
    if name is BackendName.SIM:
        from edgesched.backends.sim import SimBackend
        return SimBackend(sim_device, streams, realtime=True)     # serving: wall-clock time
    if name is BackendName.TENSORRT:
        from edgesched.backends.tensorrt import TensorRTBackend
        return TensorRTBackend(streams)
    raise BackendUnavailable(f"backend {name.value!r} is not part of this build; "
                             "use backend: onnxruntime")


class ModelEntry(Protocol):
    """What loading needs of a model entry: a config file's or a workload file's."""

    name: str
    path: Path
    slo_ms: float
    priority: Priority
    instances: int
    shapes: Mapping[str, ShapeRange]      # configured input shapes or ranges ({}: none)


def load_models(backend: Backend, entries: Iterable[ModelEntry]) -> dict[str, ModelInfo]:
    """Load each entry on `backend` (ModelLoadError names the file); name -> ModelInfo. The
    configured shapes go to the backend and into ModelInfo, where the server refuses a
    request outside them; ShapeError (one line) for one that names no input of the model or
    does not fit its declared dims."""
    models = {}
    for m in entries:
        shapes = dict(getattr(m, "shapes", None) or {})
        loaded = (backend.load(m.name, m.path, m.instances, shapes=shapes) if shapes
                  else backend.load(m.name, m.path, m.instances))
        info = ModelInfo(m.name, loaded.inputs, loaded.outputs, loaded.num_slices, m.slo_ms,
                         m.priority, m.instances, str(m.path), shapes, getattr(m, "batch", None))
        try:
            check(m.name, loaded.inputs, shapes)
            check_batchable(info)            # ShapeError: a model that cannot batch
        except BaseException:
            backend.unload(m.name)           # refused: nothing of it stays on the backend
            raise
        models[m.name] = info
    return models


__all__ = ["Backend", "LoadedModel", "ModelEntry", "create_backend", "load_models",
           "resolve_backend_name"]
