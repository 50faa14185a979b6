"""Plain values shared by every part: enums and frozen dataclasses, no behaviour."""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from edgesched.shapes import ShapeRange


class Priority(str, enum.Enum):
    """A model's (or one request's) priority class."""

    REALTIME = "realtime"
    BEST_EFFORT = "best_effort"


class PolicyName(str, enum.Enum):
    FIFO = "fifo"
    GREEDY = "greedy"
    PRIORITY = "priority"
    INTERFERENCE = "interference"


class BackendName(str, enum.Enum):
    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    SIM = "sim"


class TelemetrySource(str, enum.Enum):
    AUTO = "auto"
    JTOP = "jtop"
    SYSFS = "sysfs"
    TEGRASTATS = "tegrastats"
    NVML = "nvml"
    NONE = "none"


@dataclass(frozen=True)
class TensorSpec:
    """One named model input or output. A None dimension is dynamic (any size >= 1)."""

    name: str
    dtype: str                       # numpy dtype name, e.g. "float32"
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> str | None:
        """Why `array` does not fit this spec, or None when it does."""
        if array.dtype != self.np_dtype:
            return f"input {self.name!r}: dtype {array.dtype} != expected {self.dtype}"
        if array.ndim != len(self.shape) or any(
                want is not None and got != want for got, want in zip(array.shape, self.shape)):
            return (f"input {self.name!r}: shape {tuple(array.shape)} != expected "
                    f"{format_shape(self.shape)}")
        if any(d == 0 for d in array.shape):
            return f"input {self.name!r}: shape {tuple(array.shape)} has an empty dimension"
        return None

    @functools.cached_property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_wire(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_wire(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def format_shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class BatchConfig:
    """A model's `batch:` setting: requests of it waiting together may run as one batch."""

    max_size: int                    # rows (the inputs' dim 0, summed over members) per batch
    wait_ms: float = 0.0             # a batch short of max_size may wait this long after its
    #                                  first member's arrival for more, where the slack allows

    def to_json(self) -> dict:
        return {"max": self.max_size, **({"wait_ms": self.wait_ms} if self.wait_ms else {})}


@dataclass(frozen=True)
class ModelInfo:
    """What a backend reports about a loaded model: its interface and how it is cut."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_slices: int
    slo_ms: float
    priority: Priority
    instances: int                   # concurrent requests one slice may run at once
    source: str = ""                 # the file or directory it was loaded from
    # input -> the configured shape or range (`shapes:`); a request outside it is refused.
    # Inputs not in it take whatever their TensorSpec allows.
    shapes: Mapping[str, "ShapeRange"] = field(default_factory=dict, hash=False)
    batch: BatchConfig | None = None   # None: every request runs alone (sched/batching.py)

    def check_inputs(self, tensors: Mapping[str, np.ndarray]) -> str | None:
        """Why `tensors` are not a request's inputs to this model (the names, then each
        TensorSpec.check, then the configured shapes), or None when they are."""
        expected = self._input_names
        if tensors.keys() != expected:
            missing, extra = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
            return (f"model {self.name!r} takes inputs {sorted(expected)}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unexpected {extra}" if extra else ""))
        for spec in self.inputs:
            problem = spec.check(tensors[spec.name])
            if problem:
                return f"model {self.name!r}: {problem}"
            allowed = self.shapes.get(spec.name)
            if allowed is not None and not allowed.contains(tensors[spec.name].shape):
                return (f"model {self.name!r}: input {spec.name!r}: shape "
                        f"{tuple(tensors[spec.name].shape)} is outside the configured "
                        + (f"shape {allowed}" if allowed.fixed else
                           f"range {allowed} (min/opt/max)"))
        return None

    @functools.cached_property
    def _input_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.inputs)

    def to_wire(self) -> dict:
        return {"name": self.name, "inputs": [t.to_wire() for t in self.inputs],
                "outputs": [t.to_wire() for t in self.outputs], "slices": self.num_slices,
                "slo_ms": self.slo_ms, "priority": self.priority.value,
                "instances": self.instances,
                **({"shapes": {k: r.to_json() for k, r in self.shapes.items()}}
                   if self.shapes else {}),
                **({"batch": self.batch.to_json()} if self.batch else {})}


@dataclass(frozen=True)
class Timings:
    """Where one request's time went, in milliseconds."""

    queue_ms: float                  # arrival -> first slice launched
    device_ms: float                 # sum of its slices' run times
    total_ms: float                  # arrival -> reply ready


@dataclass(frozen=True)
class SliceRef:
    """One slice of one model: the unit the scheduler launches."""

    model: str
    index: int


@dataclass(frozen=True)
class Launch:
    """Run `slice_index` of request `request_id` on stream `stream`: one element of a plan."""

    request_id: int
    model: str
    slice_index: int
    stream: int


@dataclass(frozen=True)
class Plan:
    launches: tuple[Launch, ...] = field(default_factory=tuple)
    # Requests to answer with DeadlineExceeded now: their deadline cannot be met (only requests
    # that carry a client deadline; a policy never rejects work merely for missing its SLO).
    rejects: tuple[int, ...] = field(default_factory=tuple)


EMPTY_PLAN = Plan()     # frozen: one shared instance for every plan that launches nothing
_new = object.__new__


def make_launch(request_id: int, model: str, slice_index: int, stream: int) -> Launch:
    """Launch(request_id, model, slice_index, stream), the same value, without the frozen
    dataclass's object.__setattr__ per field (0.8 -> 0.4 us; policies make one per launch).
    One update() from a dict: item assignments into the instance's __dict__ would leave an
    instance whose every attribute read is ~5x slower (CPython 3.11), and a launch's
    fields are read some 25 times in its life."""
    made = _new(Launch)
    made.__dict__.update({"request_id": request_id, "model": model,
                          "slice_index": slice_index, "stream": stream})
    return made


def make_plan(launches: tuple[Launch, ...], rejects: tuple[int, ...] = ()) -> Plan:
    """Plan(launches, rejects), the same value, made as `make_launch` is (once per plan)."""
    made = _new(Plan)
    made.__dict__.update({"launches": launches, "rejects": rejects})
    return made


@dataclass(frozen=True)
class Completion:
    """A backend's report that one launch finished (error is None on success)."""

    launch: Launch
    started_s: float                 # monotonic clock seconds
    finished_s: float
    error: str | None = None
    device_s: float | None = None    # GPU time between CUDA timing events around the launch,
    #                                  where the backend measured it (TensorRT, timed mode)
    # The model's runtime raised on these inputs (ORT's session.run), as opposed to a device
    # fault (a CUDA error, a lost context): the lifecycle blames the inputs if their shapes
    # never ran successfully before (sched/lifecycle.py).
    rejected: bool = False


@dataclass(frozen=True)
class SliceDemand:
    """What one slice needs from the device when it runs alone (a profile entry)."""

    sm: float            # fraction of the SMs it keeps busy, 0..1
    mem: float           # fraction of peak DRAM (EMC) bandwidth it uses, 0..1
    duration_us: float   # solo run time, microseconds
    # Share of its solo time that SM contention stretches (its compute-bound kernels; launch
    # gaps and memory-bound kernels are not). None: unmeasured, taken as 1 - mem.
    compute_frac: float | None = None

    @property
    def compute_share(self) -> float:
        return 1.0 - self.mem if self.compute_frac is None else self.compute_frac


@dataclass(frozen=True)
class CoRun:
    """One measured co-run: slices started together and each one's slowdown over solo."""

    demands: tuple[SliceDemand, ...]
    slowdowns: tuple[float, ...]   # measured time / solo time, same order as demands
