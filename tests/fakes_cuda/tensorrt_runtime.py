"""Fake `tensorrt` runtime (engines as JSON blobs, execution contexts) on the simulated GPU."""
from __future__ import annotations

import enum
import importlib.machinery
import itertools
import json
import threading
import types
from pathlib import Path

import numpy as np

from tests.fakes_cuda.gpu import NON_BLOCKING, FakeGpu

# --- tensorrt ------------------------------------------------------------------------------------

def engine_blob(name: str, inputs: dict, outputs: dict, trt_major: int = 10) -> bytes:
    """A fake serialized engine. inputs: {name: (dtype, shape)}; outputs: {name: (dtype, shape,
    source input, addend)}: output = source + addend. -1 dims are dynamic; an output's -1
    dims take its source's dims."""
    return json.dumps({"fake_trt_engine": name, "trt_major": trt_major,
                       "inputs": {k: [v[0], list(v[1])] for k, v in inputs.items()},
                       "outputs": {k: [v[0], list(v[1]), v[2], v[3]]
                                   for k, v in outputs.items()}}).encode()


def write_engine(path: Path, name: str, inputs: dict, outputs: dict, trt_major: int = 10) -> Path:
    path.write_bytes(engine_blob(name, inputs, outputs, trt_major))
    return path


def make_tensorrt(gpu: FakeGpu, version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    major = int(version.split(".")[0])
    context_ids = itertools.count()

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    # 8.6's DataType ends at FP8; BF16, INT64 and INT4 came with 10.x (so did nptype's INT64).
    data_types = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8"]
    data_types += ["BF16", "INT64", "INT4"] if major >= 10 else []
    DataType = enum.Enum("DataType", [(n, i) for i, n in enumerate(data_types)])

    numpy_types = {DataType.FLOAT: np.float32, DataType.HALF: np.float16,
                   DataType.INT8: np.int8, DataType.INT32: np.int32, DataType.BOOL: np.bool_,
                   DataType.UINT8: np.uint8}
    numpy_types |= {DataType.INT64: np.int64} if major >= 10 else {}
    # engine specs name dtypes as numpy does, plus the types numpy cannot hold
    by_name = {np.dtype(t).name: d for d, t in numpy_types.items()} | {"fp8": DataType.FP8}
    by_name |= {"bfloat16": DataType.BF16} if major >= 10 else {}

    def nptype(trt_type):
        if trt_type not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return numpy_types[trt_type]

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 2):
            self.min_severity = min_severity

    class ICudaEngine:
        def __init__(self, spec: dict):
            self.name = spec["fake_trt_engine"]
            self._io = {n: (TensorIOMode.INPUT, by_name[d], tuple(s), None)
                        for n, (d, s) in spec["inputs"].items()}
            self._io |= {n: (TensorIOMode.OUTPUT, by_name[d], tuple(s), (src, add))
                         for n, (d, s, src, add) in spec["outputs"].items()}
            self._names = list(self._io)

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return self._io[name][0] if name in self._io else TensorIOMode.NONE

        def get_tensor_dtype(self, name: str):
            return self._io[name][1]

        def get_tensor_shape(self, name: str) -> tuple:
            return self._io[name][2]

        def create_execution_context(self):
            gpu.need_context("create_execution_context")
            context = IExecutionContext(self, next(context_ids))
            gpu.contexts.append(context)
            gpu.record("create_execution_context", self.name, context.id)
            return context

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine, context_id: int):
            self.engine, self.id = engine, context_id
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.busy: threading.Event | None = None   # completion of its last launch

        def set_input_shape(self, name: str, shape) -> bool:
            gpu.record("set_input_shape", self.id, name, tuple(shape))
            mode, _, dims, _ = self.engine._io.get(name, (None, None, (), None))
            shape = tuple(int(d) for d in shape)
            if mode is not TensorIOMode.INPUT or len(shape) != len(dims) or any(
                    d != s and d >= 0 for d, s in zip(dims, shape)) or min(shape) < 1:
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            mode, _, dims, source = self.engine._io[name]
            if mode is TensorIOMode.INPUT:
                return self.shapes.get(name, dims)
            src = self.get_tensor_shape(source[0])
            return tuple(s if d < 0 else d for d, s in zip(dims, src))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if not isinstance(ptr, int):
                raise TypeError("set_tensor_address(): incompatible function arguments")
            gpu.record("set_tensor_address", self.id, name, ptr)
            if name not in self.engine._io:
                return False
            self.addresses[name] = ptr
            return True

        def _view(self, name: str) -> np.ndarray | None:
            _, dtype, _, _ = self.engine._io[name]
            shape = self.get_tensor_shape(name)
            np_dtype = np.dtype(nptype(dtype))
            nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            raw = gpu.device_view(self.addresses[name], nbytes, f"{self.engine.name}/{name}")
            return None if raw is None else raw.view(np_dtype).reshape(shape)

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(): incompatible function arguments")
            gpu.record("execute_async_v3", self.engine.name, self.id, stream_handle,
                       dict(self.addresses))
            gpu.need_context("execute_async_v3")
            stream = gpu._live_stream(stream_handle, "execute_async_v3")
            if stream is None:
                return False
            if not stream.flags & NON_BLOCKING:
                gpu.violate("execute_async_v3 on a blocking stream (syncs with the default one)")
            if self.busy is not None and not self.busy.is_set() or any(
                    self in s.unrecorded for s in gpu.streams.values()):
                gpu.violate(f"execution context {self.id} launched while its last launch runs")
            unset = [n for n in self.engine._names if n not in self.addresses]
            dynamic = [n for n, (m, _, d, _) in self.engine._io.items()
                       if m is TensorIOMode.INPUT and -1 in d and n not in self.shapes]
            if unset or dynamic:
                gpu.violate(f"{self.engine.name}: execute_async_v3 with no address for "
                            f"{unset} / no shape for dynamic inputs {dynamic}")
                return False
            views = {n: self._view(n) for n in self.engine._names}
            if any(v is None for v in views.values()):
                return False
            inputs = {n: views[n].copy() for n, (m, *_) in self.engine._io.items()
                      if m is TensorIOMode.INPUT}
            if gpu.fail_execute is not None and gpu.fail_execute(self.engine.name, inputs):
                return False
            for n, (mode, _, _, source) in self.engine._io.items():
                if mode is TensorIOMode.OUTPUT:
                    out = views[n]
                    out[...] = (inputs[source[0]] + source[1]).astype(out.dtype)
            stream.unrecorded.append(self)
            return True

    class Runtime:
        def __init__(self, logger: Logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(): incompatible function arguments")
            gpu.need_context("Runtime()")
            self.logger = logger

        def deserialize_cuda_engine(self, blob) -> ICudaEngine | None:
            gpu.record("deserialize_cuda_engine")
            gpu.need_context("deserialize_cuda_engine")
            try:
                spec = json.loads(bytes(blob))
            except (ValueError, UnicodeDecodeError):
                return None                 # the real runtime logs an error and returns None
            if not isinstance(spec, dict) or spec.get("trt_major") != major:
                return None
            return ICudaEngine(spec)

    for name, value in list(locals().items()):
        if isinstance(value, type) or name == "nptype":
            setattr(trt, name, value)
    return trt
