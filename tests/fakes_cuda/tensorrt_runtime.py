"""Fake `tensorrt` runtime (engines as JSON blobs, execution contexts) on the simulated GPU.

What it holds the backend to, from NvInferRuntime.h and python/src/infer/pyCore.cpp of
TensorRT 8.6.1 and 10.x (the execution context itself is in tensorrt_context.py):
  - an engine has `num_optimization_profiles` (1 for a static engine); `get_tensor_profile_shape
    (name, k)` gives an input's [min, opt, max] in profile k;
  - `Runtime.DLA_core` (default -1: a DLA engine then runs on core 0) is read when an engine is
    deserialized; `num_DLA_cores` is the device's;
  - an engine deserializes only under the TensorRT major it was built with and, when its blob
    names one, on a GPU of its compute capability;
  - the DataType members (and `nptype`) of each version: no BF16, INT64 or INT4 on 8.6;
  - lifetimes as the bindings have them (pyCore.cpp: keep_alive<0, 1> on
    `deserialize_cuda_engine` and `create_execution_context`): a context keeps its engine
    alive, an engine its runtime, so Python frees them in that order by itself. What is left
    to the backend, and checked (gpu.py `trt_destroyed`, `_trt_alive`): every destructor runs
    with the primary context current and before it is released, a context is never destroyed
    while its launch runs, the streams and events TensorRT used are destroyed after every
    TensorRT object, and nothing of an unloaded model stays alive (`gpu.trt_live`). An
    engine holds its serialized size in device memory, a context its scratch
    (`device_memory_size`; `_v2` and `get_device_memory_size_for_profile_v2` from 10.1).
"""
from __future__ import annotations

import enum
import importlib.machinery
import itertools
import json
import types
import weakref
from pathlib import Path

import numpy as np

from tests.fakes_cuda.gpu import FakeGpu
from tests.fakes_cuda.tensorrt_context import make_context_class

DEFAULT_RANGE = (1, 1, 64)            # a dynamic dim's (min, opt, max) when a test names none


def engine_blob(name: str, inputs: dict, outputs: dict, trt_major: int = 10, *,
                profiles: int | list | None = None, dla_core: int | None = None,
                compute_capability: str | None = None, duration_us: float = 100.0,
                layers: list | None = None, device_memory: int = 65536) -> bytes:
    """A fake serialized engine. inputs: {name: (dtype, shape)}; outputs: {name: (dtype, shape,
    source input, addend)}: output = source + addend. -1 dims are dynamic; an output's -1
    dims take its source's dims. profiles (engines with dynamic inputs): a list of {input:
    (min, opt, max)}, one per optimization profile, or a count of profiles with every dynamic
    dim in DEFAULT_RANGE (default 1). dla_core: built for DLA. compute_capability: "8.7":
    only a GPU of that capability deserializes it. layers: [(layer name, us)] as the engine
    reports them to an IProfiler (default: one layer "<name>/layer0" of `duration_us`); an
    execute lasts their sum of virtual device time on its stream (times gpu.slowdown()).
    device_memory: each execution context's scratch bytes (the engine's device_memory_size)."""
    layers = [list(x) for x in layers] if layers else [[f"{name}/layer0", duration_us]]
    dynamic = {n: s for n, (_, s) in inputs.items() if -1 in s}
    if not isinstance(profiles, list):
        def span(shape, k):
            return [DEFAULT_RANGE[k] if d < 0 else d for d in shape]
        profiles = [{n: [span(s, 0), span(s, 1), span(s, 2)] for n, s in dynamic.items()}
                    for _ in range(profiles or 1)] if dynamic else []
    return json.dumps({"fake_trt_engine": name, "trt_major": trt_major,
                       "inputs": {k: [v[0], list(v[1])] for k, v in inputs.items()},
                       "outputs": {k: [v[0], list(v[1]), v[2], v[3]]
                                   for k, v in outputs.items()},
                       "profiles": [{n: [list(d) for d in r] for n, r in p.items()}
                                    for p in profiles],
                       "dla_core": dla_core, "compute_capability": compute_capability,
                       "layers": layers, "device_memory": int(device_memory)}).encode()


def write_engine(path: Path, name: str, inputs: dict, outputs: dict, trt_major: int = 10,
                 **options) -> Path:
    path.write_bytes(engine_blob(name, inputs, outputs, trt_major, **options))
    return path


def make_tensorrt(gpu: FakeGpu, version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    major = int(version.split(".")[0])
    minor = int((version.split(".") + ["0"])[1])
    engine_ids = itertools.count()
    runtime_ids = itertools.count()
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

    if major >= 10:
        class ExecutionContextAllocationStrategy(enum.Enum):
            STATIC = 0
            ON_PROFILE_CHANGE = 1
            USER_MANAGED = 2
        strategies = ExecutionContextAllocationStrategy
    else:
        strategies = None

    class IProfiler:
        """pybind11's trampoline: a subclass overriding __init__ must call this one (else
        TypeError where it is used), and must override report_layer_time."""

        def __init__(self):
            self._trt_initialized = True

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            raise RuntimeError("Tried to call pure virtual function \"IProfiler::"
                               "report_layer_time\"")

    IExecutionContext = make_context_class(gpu, major, TensorIOMode, nptype, IProfiler)

    class ICudaEngine:
        def __init__(self, spec: dict, dla_core: int | None, runtime, nbytes: int):
            self.name = spec["fake_trt_engine"]
            self._runtime = runtime                # keep_alive<0, 1>: the runtime outlives it
            self._id = next(engine_ids)
            self.device_memory_bytes = int(spec.get("device_memory", 65536))
            runtime._engines.add(self)
            gpu.trt_created("engine", self._id, self.name, nbytes)   # its weights, on the GPU
            self._io = {n: (TensorIOMode.INPUT, by_name[d], tuple(s), None)
                        for n, (d, s) in spec["inputs"].items()}
            self._io |= {n: (TensorIOMode.OUTPUT, by_name[d], tuple(s), (src, add))
                         for n, (d, s, src, add) in spec["outputs"].items()}
            self._names = list(self._io)
            self.dynamic = [n for n, (m, _, s, _) in self._io.items()
                            if m is TensorIOMode.INPUT and -1 in s]
            self.profiles = [{n: tuple(tuple(d) for d in r) for n, r in p.items()}
                             for p in spec.get("profiles") or []]
            self.dla_core = dla_core           # the core it runs on (None: a GPU engine)
            self._contexts: list[weakref.ref] = []
            self.layers = [(str(n), float(us)) for n, us in spec.get("layers") or []]

        def __del__(self):
            try:
                live = [c.id for c in self.contexts]
                problems = [f"engine {self.name} destroyed while its execution contexts {live} "
                            "live"] if live else []
                gpu.trt_destroyed("engine", self._id, problems)
            except Exception:    # a destructor must not raise (unraisable-exception warnings)
                pass

        @property
        def contexts(self) -> list:
            return [c for c in (r() for r in self._contexts) if c is not None]

        @property
        def device_memory_size(self) -> int:
            """Scratch of one context, the largest over the profiles (deprecated in 10.1)."""
            return self.device_memory_bytes

        if (major, minor) >= (10, 1):
            @property
            def device_memory_size_v2(self) -> int:
                return self.device_memory_bytes

            def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
                if not 0 <= profile_index < self.num_optimization_profiles:
                    raise RuntimeError("profile index out of range")
                return self.device_memory_bytes

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles) if self.dynamic else 1

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return self._io[name][0] if name in self._io else TensorIOMode.NONE

        def get_tensor_dtype(self, name: str):
            return self._io[name][1]

        def get_tensor_shape(self, name: str) -> tuple:
            return self._io[name][2]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            """[min, opt, max]; invalid Dims (here: empty) for a bad name or index, as the C++
            getProfileShape returns them."""
            mode, _, dims, _ = self._io.get(name, (None, None, (), None))
            if mode is not TensorIOMode.INPUT or not \
                    0 <= profile_index < self.num_optimization_profiles:
                return [(), (), ()]
            if name not in self.dynamic:
                return [dims, dims, dims]
            return list(self.profiles[profile_index][name])

        def profile_limits(self, index: int, name: str) -> tuple | None:
            if name not in self.dynamic or not 0 <= index < len(self.profiles):
                return None
            return self.profiles[index][name]

        def create_execution_context(self, strategy=None):
            if strategy is not None and strategies is None:
                raise TypeError("create_execution_context(): incompatible function arguments "
                                "(8.6 takes no allocation strategy)")
            if strategy is not None and not isinstance(strategy, strategies):
                raise TypeError("create_execution_context(): incompatible function arguments")
            own_memory = strategy is None or strategy is not strategies.USER_MANAGED
            return self._new_context(own_memory)

        if major < 10:
            def create_execution_context_without_device_memory(self):
                return self._new_context(False)

        def _new_context(self, own_memory: bool):
            gpu.need_context("create_execution_context")
            if major >= 10 or not self.dynamic:
                profile = 0
            else:      # 8.6: profile 0 only if no other context holds it; later ones get none
                profile = -1 if any(c.profile == 0 for c in self.contexts) else 0
            context = IExecutionContext(self, next(context_ids), profile, own_memory)
            self._contexts.append(weakref.ref(context))
            gpu._contexts.append(weakref.ref(context))
            gpu.record("create_execution_context", self.name, context.id, profile)
            return context

    class Runtime:
        def __init__(self, logger: Logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(): incompatible function arguments")
            gpu.need_context("Runtime()")
            self.logger = logger
            self._dla_core = -1
            self._id = next(runtime_ids)
            self._engines: weakref.WeakSet = weakref.WeakSet()
            gpu.trt_created("runtime", self._id, f"runtime{self._id}")

        def __del__(self):
            try:
                live = [e.name for e in self._engines]
                problems = [f"runtime destroyed while engines {live} live"] if live else []
                gpu.trt_destroyed("runtime", self._id, problems)
            except Exception:    # a destructor must not raise (unraisable-exception warnings)
                pass

        @property
        def num_DLA_cores(self) -> int:      # noqa: N802 (the real name)
            return gpu.dla_cores

        @property
        def DLA_core(self) -> int:           # noqa: N802
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, core: int) -> None:   # noqa: N802
            if not isinstance(core, int) or isinstance(core, bool):
                raise TypeError("DLA_core: incompatible function arguments")
            gpu.record("runtime.DLA_core", core)
            if not -1 <= core < gpu.dla_cores:     # TensorRT logs an error and keeps the old
                gpu.record("trt.error", f"DLA core {core} out of range")
                return
            self._dla_core = core

        def deserialize_cuda_engine(self, blob) -> ICudaEngine | None:
            gpu.record("deserialize_cuda_engine", self._dla_core)
            gpu.need_context("deserialize_cuda_engine")
            try:
                spec = json.loads(bytes(blob))
            except (ValueError, UnicodeDecodeError):
                return None                 # the real runtime logs an error and returns None
            if not isinstance(spec, dict) or spec.get("trt_major") != major:
                return None
            named = [v[0] for v in [*spec["inputs"].values(), *spec["outputs"].values()]]
            if any(d not in by_name for d in named):    # e.g. int64 on 8.6: no such type
                return None
            built_for = spec.get("compute_capability")
            if built_for and built_for != "{}.{}".format(*gpu.compute_capability):
                return None
            dla = None if spec.get("dla_core") is None else max(self._dla_core, 0)
            return ICudaEngine(spec, dla, self, len(bytes(blob)))

    for name, value in list(locals().items()):
        if (isinstance(value, type) and name != "strategies") or name == "nptype":
            setattr(trt, name, value)
    return trt
