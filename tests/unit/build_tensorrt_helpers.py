"""The fake `tensorrt` builder module and small model helpers, shared by test_build_tensorrt_*.py.

The fake is injected into sys.modules with a real ModuleSpec, so `importlib.util.find_spec`
(what `available()` asks) sees it exactly as it would see the real package. It records every
call, in order, and checks what the real bindings check: enum members of the right enum, known
attribute names only (a misspelt builder-config attribute raises AttributeError, as it does on
pybind objects), an ONNX parser fed real bytes, and a JSON layer dump only when asked for JSON.
"""
from __future__ import annotations

import enum
import importlib.machinery
import json
import types
from pathlib import Path

import onnx
from onnx import helper


class _ParserError:
    """What OnnxParser.get_error(i) returns: str() is the formatted message."""

    def __init__(self, text: str):
        self.text = text

    def desc(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


class FakeTRT:
    """Builds the fake module; `calls` records (what, args...) in call order."""

    def __init__(self, version: str = "10.3.0", dla_cores: int = 2, parse_errors=None,
                 build_fails: bool = False, deserialize_fails: bool = False):
        self.calls: list[tuple] = []
        self.version, self.dla_cores = version, dla_cores
        self.parse_errors = parse_errors          # None: parse succeeds; list: parse fails
        self.build_fails, self.deserialize_fails = build_fails, deserialize_fails
        self.blobs: list[bytes] = []
        self.module = self._make()

    def record(self, *what) -> None:
        self.calls.append(what)

    def named(self, what: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == what]

    def index(self, call: tuple) -> int:
        return self.calls.index(call)

    def _make(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        trt.__version__ = self.version

        class NetworkDefinitionCreationFlag(enum.IntEnum):   # pybind enums convert with int()
            EXPLICIT_BATCH = 0
            STRONGLY_TYPED = 1

        MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM TACTIC_DRAM")
        BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 GPU_FALLBACK DEBUG REFIT STRICT_TYPES")
        ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
        DeviceType = enum.Enum("DeviceType", "GPU DLA")
        LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
        Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

        class Logger:
            INTERNAL_ERROR, ERROR, WARNING = (Severity.INTERNAL_ERROR, Severity.ERROR,
                                              Severity.WARNING)
            INFO, VERBOSE = Severity.INFO, Severity.VERBOSE

            def __init__(self, min_severity=Severity.WARNING):
                assert isinstance(min_severity, Severity)
                fake.record("Logger", min_severity)

        class Tensor:
            def __init__(self, name: str, shape: tuple):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags: int):
                self.flags, self.inputs, self.source = flags, [], None

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
                    self.errors = [_ParserError(e) for e in fake.parse_errors]
                    return False
                inits = {t.name for t in proto.graph.initializer}
                for vi in proto.graph.input:
                    if vi.name in inits:
                        continue
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                                 for d in vi.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(vi.name, dims))
                self.network.source = proto.graph.name
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> _ParserError:
                return self.errors[i]

        class OptimizationProfile:
            def set_shape(self, name: str, min, opt, max) -> None:   # noqa: A002 (real names)
                fake.record("profile.set_shape", name, tuple(min), tuple(opt), tuple(max))

        class BuilderConfig:
            _FIELDS = {"profiling_verbosity", "default_device_type", "DLA_core"}

            def __setattr__(self, name, value):
                if name not in self._FIELDS:
                    raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute "
                                         f"{name!r}")
                expected = {"profiling_verbosity": ProfilingVerbosity,
                            "default_device_type": DeviceType, "DLA_core": int}[name]
                assert isinstance(value, expected), (name, value)
                fake.record(f"config.{name}", value)
                object.__setattr__(self, name, value)

            def set_memory_pool_limit(self, pool, size: int) -> None:
                assert isinstance(pool, MemoryPoolType) and isinstance(size, int)
                fake.record("config.set_memory_pool_limit", pool, size)

            def set_flag(self, flag) -> None:
                assert isinstance(flag, BuilderFlag)
                fake.record("config.set_flag", flag)

            def add_optimization_profile(self, profile) -> int:
                assert isinstance(profile, OptimizationProfile)
                fake.record("config.add_optimization_profile")
                return 0

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
                if fake.build_fails:
                    return None
                blob = json.dumps({"engine": network.source,
                                   "inputs": [t.name for t in network.inputs]}).encode()
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

            def deserialize_cuda_engine(self, blob):
                fake.record("deserialize_cuda_engine")
                if fake.deserialize_fails:
                    return None
                return Engine(json.loads(bytes(blob)))

        for name, value in list(locals().items()):
            if isinstance(value, type) and name not in ("fake", "trt"):
                setattr(trt, name, value)
        return trt


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def dynamic_model(batch_dims=("N",), two_inputs: bool = False) -> onnx.ModelProto:
    shape = [*batch_dims, 4]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)]
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, "T"]))
        nodes.append(helper.make_node("Relu", ["z"], ["w"]))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)]
    if two_inputs:
        outputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, "T"]))
    model = helper.make_model(helper.make_graph(nodes, "dyn", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text
