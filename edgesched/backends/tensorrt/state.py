"""What the TensorRT backend holds per loaded slice, model, request and launch in flight.

Plain bookkeeping: the tensorrt module is handed in (`Slice(trt, engine, ...)`), never imported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesched import dtypes
from edgesched.backends.tensorrt.memory import Tensor
from edgesched.errors import ModelLoadError
from edgesched.types import Launch, TensorSpec


class Slice:
    """One engine and its execution contexts: one per instance, each with its own scratch
    memory (the default allocation), so `instances` requests of this slice can run at once."""

    def __init__(self, trt, engine, instances: int, path: Path):
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}       # engine dims, -1 = dynamic
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            try:
                self.dtypes[name] = dtypes.from_tensorrt(engine.get_tensor_dtype(name)).np_dtype
            except dtypes.UnsupportedDtype as e:
                raise ModelLoadError(f"{path}: tensor {name!r}: {e}") from None
            self.shapes[name] = tuple(int(d) for d in engine.get_tensor_shape(name))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.contexts = [engine.create_execution_context() for _ in range(instances)]
        if any(c is None for c in self.contexts):
            raise ModelLoadError(f"{path}: TensorRT cannot create {instances} execution "
                                 "context(s) (out of device memory?)")
        self.free = list(self.contexts)
        self.engine = engine

    def spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, self.dtypes[name].name,
                          tuple(None if d < 0 else d for d in self.shapes[name]))


class Model:
    def __init__(self, slices: list[Slice], inputs, outputs):
        self.slices, self.inputs, self.outputs = slices, tuple(inputs), tuple(outputs)
        self.host_visible = {t.name for t in self.inputs} | {t.name for t in self.outputs}
        self.dtypes: dict[str, np.dtype] = {}
        for piece in slices:
            self.dtypes.update(piece.dtypes)


class Request:
    __slots__ = ("model", "tensors", "synthetic", "error", "running", "released")

    def __init__(self, model: Model, synthetic: bool):
        self.model, self.synthetic = model, synthetic
        self.tensors: dict[str, Tensor] = {}
        self.error: str | None = None
        self.running = 0             # launches not yet reported by poll
        self.released = False        # fetched/released while a launch ran: free when it ends


class Flight:
    """One launch between `launch` and `poll`."""

    __slots__ = ("launch", "request", "started_s", "finished_s", "error", "piece", "context",
                 "event")

    def __init__(self, launch: Launch, request: Request | None, started_s: float):
        self.launch, self.request, self.started_s = launch, request, started_s
        self.finished_s = started_s
        self.error: str | None = None
        self.piece: Slice | None = None
        self.context = None
        self.event = 0
