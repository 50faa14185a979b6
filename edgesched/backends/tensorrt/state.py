"""What the TensorRT backend holds per loaded model, request and launch in flight (per loaded
slice: slices.py). Plain bookkeeping: no device library is imported here."""
from __future__ import annotations

import numpy as np

from edgesched.backends.tensorrt.memory import Tensor
from edgesched.backends.tensorrt.slices import Slice
from edgesched.types import Launch


class Model:
    def __init__(self, slices: list[Slice], inputs, outputs):
        self.slices, self.inputs, self.outputs = slices, tuple(inputs), tuple(outputs)
        self.host_visible = {t.name for t in self.inputs} | {t.name for t in self.outputs}
        self.dtypes: dict[str, np.dtype] = {}
        # model input -> the engines that read it: `stage` checks a shape against each of them
        self.readers: dict[str, list[Slice]] = {t.name: [] for t in self.inputs}
        for piece in slices:
            self.dtypes.update(piece.dtypes)
            for name in piece.inputs:
                if name in self.readers:
                    self.readers[name].append(piece)


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
                 "event", "start_event", "device_s")

    def __init__(self, launch: Launch, request: Request | None, started_s: float):
        self.launch, self.request, self.started_s = launch, request, started_s
        self.finished_s = started_s
        self.error: str | None = None
        self.piece: Slice | None = None
        self.context = None
        self.event = 0
        self.start_event = 0          # timed mode: a timing event recorded before the enqueue
        self.device_s: float | None = None
