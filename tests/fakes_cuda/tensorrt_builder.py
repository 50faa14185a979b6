"""The builder side of a fake `tensorrt` (`edgesched build`), per TensorRT version.

`make_builder(fake)` builds the module for a `tests.unit.build_tensorrt_helpers.FakeTRT`, which
records every call in order and holds the options (version, DLA cores, failures). What it holds
the code to, from NvInfer.h / pyCore.cpp / pyInt8.cpp of 8.6.1, 10.x, 10.12 and 11.0:
  - enum members of the right enum; known builder-config attributes only (a misspelt one
    raises AttributeError, as on pybind objects); an ONNX parser fed real bytes;
  - 8.6: NetworkDefinitionCreationFlag has EXPLICIT_BATCH only, and the ONNX parser refuses an
    implicit-batch network; no INT64 DataType (the parser casts int64 inputs to INT32);
  - 10.x: EXPLICIT_BATCH (deprecated, ignored) and STRONGLY_TYPED; a strongly typed network
    refuses the FP16/INT8 flags; from 10.1 the `int8_calibrator` property and
    `set_calibration_profile` warn (DeprecationWarning);
  - 11: BuilderFlag has no FP16 or INT8, there is no calibrator class, no `int8_calibrator`;
  - a build fails (None) when a dynamic input has no optimization profile, when a profile
    misses one or contradicts a static dim, or when an INT8-calibrated dynamic network has no
    calibration profile; `set_shape` raises for min <= opt <= max broken;
  - a calibrator is driven as TensorRT drives it: read_calibration_cache, then get_batch(names)
    until it returns None (each pointer a live device allocation of the fake GPU big enough
    for the input at the calibration profile's opt shape), then write_calibration_cache.
A misuse the real library would not report is appended to `fake.problems` (the fixture
asserts none); what the real build would refuse returns None with `("build.error", why)`.
"""
from __future__ import annotations

import enum
import importlib.machinery
import json
import types
import warnings

import numpy as np
import onnx

_ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF",
               onnx.TensorProto.INT8: "INT8", onnx.TensorProto.INT32: "INT32",
               onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
               onnx.TensorProto.UINT8: "UINT8"}


class ParserError:
    """What OnnxParser.get_error(i) returns: str() is the formatted message."""

    def __init__(self, text: str):
        self.text = text

    def desc(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def make_builder(fake) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = fake.version
    release = tuple(int(p) for p in fake.version.split(".")[:2])
    major = release[0]

    if major < 10:
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     {"EXPLICIT_BATCH": 0})
    elif major == 10:
        NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    else:
        NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
    flags = ["FP16", "INT8"] if major < 11 else []
    BuilderFlag = enum.Enum("BuilderFlag", flags + ["GPU_FALLBACK", "DEBUG", "REFIT"])
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM TACTIC_DRAM")
    ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
    DeviceType = enum.Enum("DeviceType", "GPU DLA")
    LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
    Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")
    data_types = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8"]
    data_types += ["BF16", "INT64", "INT4"] if major >= 10 else []
    DataType = enum.Enum("DataType", data_types)
    numpy_types = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8,
                   "INT32": np.int32, "BOOL": np.bool_, "UINT8": np.uint8, "INT64": np.int64}

    def nptype(trt_type):
        if not isinstance(trt_type, DataType) or trt_type.name not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return numpy_types[trt_type.name]

    def deprecated(what: str) -> None:
        if release >= (10, 1):
            warnings.warn(f"Use {what} instead.", DeprecationWarning, stacklevel=3)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING = (Severity.INTERNAL_ERROR, Severity.ERROR,
                                          Severity.WARNING)
        INFO, VERBOSE = Severity.INFO, Severity.VERBOSE

        def __init__(self, min_severity=Severity.WARNING):
            assert isinstance(min_severity, Severity)
            fake.record("Logger", min_severity)

    class Tensor:
        def __init__(self, name: str, shape: tuple, dtype):
            self.name, self._shape, self.dtype = name, shape, dtype

        @property
        def shape(self) -> tuple:
            return self._shape

        @shape.setter
        def shape(self, dims) -> None:
            dims = tuple(dims)
            assert all(type(d) is int for d in dims), dims
            fake.record("input.shape", self.name, dims)
            if len(dims) != len(self._shape):
                fake.problems.append(f"{self.name}: shape {dims} changes the input's rank")
            self._shape = dims

    class Network:
        def __init__(self, flags: int):
            self.flags, self.inputs, self.source = flags, [], None
            self.strongly_typed = major >= 11 or (
                major == 10 and bool(flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.explicit_batch = major >= 10 or bool(flags & 1)

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            assert isinstance(network, Network) and isinstance(logger, Logger)
            self.network, self.errors = network, []

        def parse(self, model: bytes, path: str | None = None) -> bool:
            assert isinstance(model, (bytes, bytearray, memoryview))
            proto = onnx.load_from_string(bytes(model))    # real bytes of a real model
            fake.record("parse", proto.graph.name)
            if fake.parse_errors is not None:
                self.errors = [ParserError(e) for e in fake.parse_errors]
                return False
            if not self.network.explicit_batch:
                self.errors = [ParserError("Network must have explicit batch dimension "
                                           "(create it with EXPLICIT_BATCH)")]
                return False
            inits = {t.name for t in proto.graph.initializer}
            for vi in proto.graph.input:
                if vi.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                kind = _ONNX_TYPES.get(vi.type.tensor_type.elem_type, "FLOAT")
                if kind == "INT64" and major < 10:
                    kind = "INT32"              # 8.6's parser casts INT64 I/O down
                self.network.inputs.append(Tensor(vi.name, dims, DataType[kind]))
            self.network.source = proto.graph.name
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class OptimizationProfile:
        def __init__(self):
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:   # noqa: A002 (real names)
            dims = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
            fake.record("profile.set_shape", input, *dims)
            if len({len(s) for s in dims}) != 1 or any(
                    not lo <= mid <= hi for lo, mid, hi in zip(*dims)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            self.shapes[input] = dims

    class IInt8Calibrator:
        def __init__(self):
            self._initialized = True

    config_fields = {"profiling_verbosity": ProfilingVerbosity,
                     "default_device_type": DeviceType, "DLA_core": int}

    class BuilderConfig:
        def __init__(self):
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "calibrator", None)
            object.__setattr__(self, "calibration_profile", None)

        def __setattr__(self, name, value):
            if name == "int8_calibrator" and major < 11:
                deprecated("explicit quantization")
                if not isinstance(value, IInt8Calibrator):
                    raise TypeError("int8_calibrator: incompatible function arguments")
                if not getattr(value, "_initialized", False):   # pybind11's own check
                    raise TypeError(f"{type(value).__name__}.__init__() must be called when "
                                    "overriding __init__")
                fake.record("config.int8_calibrator")
                object.__setattr__(self, "calibrator", value)
                return
            if name not in config_fields:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute "
                                     f"{name!r}")
            assert isinstance(value, config_fields[name]), (name, value)
            fake.record(f"config.{name}", value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            assert isinstance(pool, MemoryPoolType) and isinstance(size, int)
            fake.record("config.set_memory_pool_limit", pool, size)

        def set_flag(self, flag) -> None:
            assert isinstance(flag, BuilderFlag)
            fake.record("config.set_flag", flag)
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile) -> int:
            assert isinstance(profile, OptimizationProfile)
            fake.record("config.add_optimization_profile")
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        if major < 11:
            def set_calibration_profile(self, profile) -> bool:
                deprecated("explicit quantization")
                assert isinstance(profile, OptimizationProfile)
                fake.record("config.set_calibration_profile")
                object.__setattr__(self, "calibration_profile", profile)
                return True

    def _problem_of(network: Network, config: BuilderConfig) -> str | None:
        """Why TensorRT would refuse to build this (it logs it and returns None)."""
        dynamic = {t.name: t.shape for t in network.inputs if -1 in t.shape}
        static = {t.name: t.shape for t in network.inputs if -1 not in t.shape}
        if dynamic and not config.profiles:
            return "Network has dynamic or shape inputs, but no optimization profile defined"
        for k, profile in enumerate(config.profiles):
            for name, dims in dynamic.items():
                if name not in profile.shapes:
                    return f"optimization profile {k} has no shape for dynamic input {name}"
                if any(d >= 0 and d != s for shape in profile.shapes[name]
                       for d, s in zip(dims, shape)):
                    return f"optimization profile {k}: {name} contradicts its static dims"
            for name in profile.shapes:
                if name in static and any(s != static[name] for s in profile.shapes[name]):
                    return f"optimization profile {k}: {name} is static {static[name]}"
                if name not in dynamic and name not in static:
                    return f"optimization profile {k} names {name}, not a network input"
        if network.strongly_typed and config.flags & {"FP16", "INT8"}:
            return "precision flags are not allowed on a strongly typed network"
        if config.calibrator is not None and dynamic and config.calibration_profile is None:
            return "Calibration profile must be set for a network with runtime dimensions"
        return None

    def _calibrate(network: Network, config: BuilderConfig) -> None:
        calibrator, gpu = config.calibrator, fake.gpu
        profile = config.calibration_profile
        shapes = {t.name: (profile.shapes[t.name][1] if profile and t.name in profile.shapes
                           else t.shape) for t in network.inputs}
        names = [t.name for t in network.inputs]
        nbytes = {t.name: int(np.prod(shapes[t.name])) * np.dtype(nptype(t.dtype)).itemsize
                  for t in network.inputs}
        cache = calibrator.read_calibration_cache()
        fake.record("calibrator.read_calibration_cache", cache is not None)
        if cache is not None:
            assert isinstance(bytes(cache), bytes)
            return
        assert calibrator.get_batch_size() == 1
        batches = 0
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            assert len(pointers) == len(names) and all(type(p) is int for p in pointers)
            for name, ptr in zip(names, pointers):
                alloc = gpu.device.get(ptr)
                if alloc is None or alloc.freed or alloc.array.size < nbytes[name]:
                    fake.problems.append(f"get_batch: {name} at {ptr:#x} is not a live device "
                                         f"allocation of {nbytes[name]} bytes")
            fake.batches.append({n: gpu.device[p].array[:nbytes[n]].copy()
                                 for n, p in zip(names, pointers) if p in gpu.device})
            batches += 1
        fake.record("calibrator.batches", batches)
        calibrator.write_calibration_cache(memoryview(f"TRT-{fake.version}-EntropyCalibration2"
                                                      f"\n{batches}\n".encode()))

    class Builder:
        def __init__(self, logger: Logger):
            assert isinstance(logger, Logger)
            fake.record("Builder")

        @property
        def num_DLA_cores(self) -> int:          # noqa: N802 (the real name)
            return fake.dla_cores

        def create_network(self, flags: int = 0) -> Network:
            assert type(flags) is int, flags
            fake.record("create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            fake.record("create_builder_config")
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            fake.record("create_optimization_profile")
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            assert isinstance(network, Network) and isinstance(config, BuilderConfig)
            fake.record("build_serialized_network", network.source)
            problem = _problem_of(network, config)
            if problem:
                fake.record("build.error", problem)
                return None
            if config.calibrator is not None:
                if "INT8" not in config.flags:
                    fake.problems.append("an INT8 calibrator without BuilderFlag.INT8 is unused")
                _calibrate(network, config)
            if fake.build_fails:
                return None
            blob = json.dumps({"engine": network.source,
                               "inputs": [t.name for t in network.inputs],
                               "shapes": {t.name: list(t.shape) for t in network.inputs},
                               "profiles": len(config.profiles)}).encode()
            fake.blobs.append(blob)
            return memoryview(blob)              # IHostMemory: a buffer, not bytes

    class EngineInspector:
        def __init__(self, source: dict):
            self.source = source

        def get_engine_information(self, fmt) -> str:
            assert isinstance(fmt, LayerInformationFormat)
            fake.record("get_engine_information", fmt)
            if fmt is not LayerInformationFormat.JSON:
                return "Layer(Convolution): conv ... (one line per layer)"
            return json.dumps({"Layers": [f"{self.source['engine']}/layer0"],
                               "Bindings": self.source["inputs"]})

    class Engine:
        def __init__(self, source: dict):
            self.source = source

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector(self.source)

    class Runtime:
        def __init__(self, logger: Logger):
            assert isinstance(logger, Logger)
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob):
            fake.record("deserialize_cuda_engine", self.DLA_core)
            if fake.deserialize_fails:
                return None
            return Engine(json.loads(bytes(blob)))

    if major < 11:
        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

    hidden = {"fake", "trt"} | ({"IInt8Calibrator"} if major >= 11 else set())
    for name, value in list(locals().items()):
        if isinstance(value, type) and name not in hidden or name == "nptype":
            setattr(trt, name, value)
    return trt
