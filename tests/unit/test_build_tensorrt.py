"""Engine building against a fake `tensorrt` module that mirrors the real Python API.

The fake is injected into sys.modules with a real ModuleSpec, so `importlib.util.find_spec`
(what `available()` asks) sees it exactly as it would see the real package. It records every
call, in order, and checks what the real bindings check: enum members of the right enum, known
attribute names only (a misspelt builder-config attribute raises AttributeError, as it does on
pybind objects), an ONNX parser fed real bytes, and a JSON layer dump only when asked for JSON.
"""
from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import helper

from edgesched.backends import tensorrt as trt_backend
from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine
from edgesched.commands import cli
from edgesched.commands.build import build
from edgesched.modelfiles.manifest import read_manifest
from tests import graphs


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


@pytest.fixture
def fake_trt(monkeypatch):
    """install(**FakeTRT options) -> the FakeTRT now importable as `tensorrt`."""
    def install(**options) -> FakeTRT:
        fake = FakeTRT(**options)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        return fake
    return install


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.fixture
def residual_onnx(tmp_path) -> Path:
    return save(graphs.residual_chain().model, tmp_path / "chain.onnx")


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


# --- the fake is what the code under test sees ----------------------------------------------

def test_fake_module_is_found_like_the_real_one(fake_trt):
    fake_trt(version="10.3.0")
    assert importlib.util.find_spec("tensorrt") is not None
    assert trt_backend.available() and trt_backend.version() == "10.3.0"


# --- edgesched build with TensorRT ----------------------------------------------------------

def test_build_writes_an_engine_and_layer_info_per_slice(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    out = tmp_path / "built"
    report = build(residual_onnx, 3, out, "chain")
    manifest = read_manifest(out)
    assert [e.engine for e in manifest.slices] == ["slice_00.engine", "slice_01.engine",
                                                    "slice_02.engine"]
    assert sorted(p.name for p in out.glob("*.engine")) == [e.engine for e in manifest.slices]
    assert sorted(p.name for p in out.glob("*.layers.json")) == \
        [f"slice_{k:02d}.layers.json" for k in range(3)]
    for entry, blob in zip(manifest.slices, fake.blobs):
        engine = json.loads((out / entry.engine).read_bytes())
        assert (out / entry.engine).read_bytes() == blob
        # slice k's engine was built from slice k's ONNX file
        assert engine["inputs"] == list(entry.inputs)
        assert engine["engine"] == onnx.load(str(manifest.slice_path(entry))).graph.name
        layers = json.loads((out / entry.engine).with_suffix(".layers.json").read_text())
        assert layers == {"Layers": [f"{engine['engine']}/layer0"], "Bindings": engine["inputs"]}
    assert fake.named("get_engine_information") == \
        [("get_engine_information", fake.module.LayerInformationFormat.JSON)] * 3
    assert "built 3 TensorRT 10.3.0 engines" in report
    assert "FP16" not in report.splitlines()[-1] and "DLA" not in report
    assert len(fake.named("create_network")) == 3 and len(fake.named("parse")) == 3


def test_build_through_the_cli_records_engines(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt()
    out = tmp_path / "cli"
    assert cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(out),
                     "--fp16"]) == 0
    printed = capsys.readouterr()
    assert "built 2 TensorRT 10.3.0 engines (FP16)" in printed.out
    assert all((out / e.engine).is_file() for e in read_manifest(out).slices)
    assert "engines [" in printed.err          # the progress bar goes to stderr


@pytest.mark.parametrize("fp16", [False, True])
def test_fp16_flag_only_with_fp16(fake_trt, residual_onnx, tmp_path, fp16):
    fake = fake_trt()
    build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(fp16=fp16))
    flags = [c[1] for c in fake.named("config.set_flag")]
    BuilderFlag = fake.module.BuilderFlag
    assert flags == ([BuilderFlag.FP16] * 2 if fp16 else [])
    assert not fake.named("config.default_device_type") and not fake.named("config.DLA_core")


def test_dla_sets_device_type_core_and_gpu_fallback(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt(dla_cores=2)
    report = build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(fp16=True, dla_core=1))
    m = fake.module
    assert fake.named("config.default_device_type") == \
        [("config.default_device_type", m.DeviceType.DLA)] * 2
    assert fake.named("config.DLA_core") == [("config.DLA_core", 1)] * 2
    assert sorted(c[1].name for c in fake.named("config.set_flag")) == \
        ["FP16", "FP16", "GPU_FALLBACK", "GPU_FALLBACK"]
    builds = [i for i, c in enumerate(fake.calls) if c[0] == "build_serialized_network"]
    for what in ("config.default_device_type", "config.DLA_core"):
        assert all(i < builds[-1] for i, c in enumerate(fake.calls) if c[0] == what)
    assert "for DLA core 1" in report


def test_dla_without_fp16_is_a_one_line_error_and_builds_nothing(fake_trt, residual_onnx,
                                                                 tmp_path):
    fake = fake_trt()
    with pytest.raises(EngineBuildError) as info:
        build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(dla_core=0))
    assert "--fp16" in one_line(info.value)
    assert not fake.named("build_serialized_network")
    assert not list((tmp_path / "o").glob("*.engine"))


def test_dla_without_fp16_on_the_cli_is_status_2(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt()
    code = cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(tmp_path / "o"),
                     "--dla", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--fp16" in err


@pytest.mark.parametrize("cores, core", [(2, 2), (2, 7), (0, 0)])
def test_dla_core_beyond_the_device_is_a_one_line_error(fake_trt, residual_onnx, tmp_path,
                                                        cores, core):
    fake = fake_trt(dla_cores=cores)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions(fp16=True, dla_core=core))
    line = one_line(info.value)
    assert f"--dla {core}" in line and f"{cores} DLA cores" in line
    assert not fake.named("build_serialized_network")
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.parametrize("version, flags", [("8.6.1", 1), ("8.6.2.3", 1), ("10.0.1.6", 0),
                                            ("10.3.0", 0), ("10.7.0.post1", 0)])
def test_network_flags_per_tensorrt_version(fake_trt, residual_onnx, tmp_path, version, flags):
    fake = fake_trt(version=version)
    build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert fake.named("create_network") == [("create_network", flags)]
    if flags:
        assert flags == 1 << int(fake.module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def test_parse_failure_names_the_file_and_the_first_error(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt(parse_errors=[
        "In node 3 (importConv): UNSUPPORTED_NODE: Assertion failed: kernel rank\nmore detail",
        "In node 7 (importIf): second error"])
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    line = one_line(info.value)
    assert str(residual_onnx) in line and "UNSUPPORTED_NODE" in line
    assert "more detail" not in line and "second error" not in line
    assert not fake.named("build_serialized_network")


def test_parse_failure_without_parser_errors_is_still_one_line(fake_trt, residual_onnx,
                                                               tmp_path):
    fake_trt(parse_errors=[])
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert str(residual_onnx) in one_line(info.value)


def test_a_failed_build_is_a_one_line_engine_build_error(fake_trt, residual_onnx, tmp_path):
    fake_trt(build_fails=True)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert str(residual_onnx) in one_line(info.value)
    assert not (tmp_path / "x.engine").exists()
    assert not (tmp_path / "x.layers.json").exists()


def test_an_engine_that_does_not_deserialize_is_a_one_line_error(fake_trt, residual_onnx,
                                                                  tmp_path):
    # The message names the engine just built (x.engine), not a derived name.
    fake_trt(deserialize_fails=True)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    line = one_line(info.value)
    assert str(tmp_path / "x.engine") in line and "layers.engine" not in line, line


def test_failed_build_through_the_cli_is_status_2(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt(build_fails=True)
    code = cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "slice_00.onnx" in err


def test_dynamic_dims_get_one_profile_at_size_1(fake_trt, tmp_path):
    fake = fake_trt()
    path = save(dynamic_model(("N",), two_inputs=True), tmp_path / "dyn.onnx")
    build_engine(path, tmp_path / "dyn.engine", BuildOptions())
    assert len(fake.named("create_optimization_profile")) == 1
    assert len(fake.named("config.add_optimization_profile")) == 1
    assert sorted(fake.named("profile.set_shape")) == [
        ("profile.set_shape", "x", (1, 4), (1, 4), (1, 4)),
        ("profile.set_shape", "z", (2, 1), (2, 1), (2, 1))]
    assert fake.index(("config.add_optimization_profile",)) < \
        fake.index(("build_serialized_network", "dyn"))


def test_static_dims_get_no_profile(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert not fake.named("create_optimization_profile")
    assert not fake.named("config.add_optimization_profile")


def test_dynamic_batch_survives_slicing_into_engines(fake_trt, tmp_path):
    fake = fake_trt()
    model = dynamic_model(("N",))
    model.graph.node.extend([helper.make_node("Tanh", ["y"], ["y2"]),
                             helper.make_node("Relu", ["y2"], ["y3"])])
    model.graph.output[0].name = "y3"
    path = save(model, tmp_path / "dyn.onnx")
    build(path, 3, tmp_path / "o")
    shapes = [c[2] for c in fake.named("profile.set_shape")]
    assert shapes == [(1, 4)] * 3


def test_profiling_verbosity_and_workspace_are_set_before_building(fake_trt, residual_onnx,
                                                                   tmp_path):
    fake = fake_trt()
    m = fake.module
    build_engine(residual_onnx, tmp_path / "a.engine", BuildOptions())
    build_engine(residual_onnx, tmp_path / "b.engine", BuildOptions(workspace_bytes=1 << 24))
    assert fake.named("config.profiling_verbosity") == \
        [("config.profiling_verbosity", m.ProfilingVerbosity.DETAILED)] * 2
    assert fake.named("config.set_memory_pool_limit") == [
        ("config.set_memory_pool_limit", m.MemoryPoolType.WORKSPACE, trt_backend.WORKSPACE_BYTES),
        ("config.set_memory_pool_limit", m.MemoryPoolType.WORKSPACE, 1 << 24)]
    build_at = [i for i, c in enumerate(fake.calls) if c[0] == "build_serialized_network"]
    verbosity_at = [i for i, c in enumerate(fake.calls) if c[0] == "config.profiling_verbosity"]
    assert verbosity_at[0] < build_at[0] < verbosity_at[1] < build_at[1]
    assert fake.named("Logger") == [("Logger", m.Logger.WARNING)] * 2
