"""Building TensorRT engines from ONNX slices: what `edgesched build` runs on the device."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from edgesched.errors import BackendUnavailable, EdgeschedError

WORKSPACE_BYTES = 1 << 30          # builder scratch limit; Jetson shares DRAM with the CPU


class EngineBuildError(EdgeschedError):
    code = "ENGINE_BUILD_ERROR"


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    dla_core: int | None = None    # DLA core index; layers DLA cannot run fall back to the GPU
    workspace_bytes: int = WORKSPACE_BYTES

    def __post_init__(self) -> None:
        # Checked here, not at build time, so a wrong command fails before slicing, off-device.
        if self.dla_core is not None and not self.fp16:
            raise EngineBuildError("--dla needs --fp16: DLA runs FP16 or INT8 only")


def available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _import_trt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("tensorrt is not importable (it comes with JetPack on a "
                                 "Jetson)") from None
    return tensorrt


def _major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def version() -> str:
    return str(_import_trt().__version__)


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions) -> Path:
    """Build one serialized engine; also write its layer information beside it as JSON."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.6 needs the flag.
    flags = 0 if _major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no detail"]
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse it: "
                               f"{errors[0].splitlines()[0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED   # layer info for calibrate
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise EngineBuildError(f"--dla {options.dla_core}: this device has "
                                   f"{builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    _fix_dynamic_shapes(trt, builder, network, config)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log "
                               "above)")
    engine_path.write_bytes(bytes(blob))
    _write_layer_info(trt, logger, blob, engine_path)
    return engine_path


def _fix_dynamic_shapes(trt, builder, network, config) -> None:
    """Dynamic dimensions get one optimization profile at size 1 (batch-1 serving)."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            fixed = tuple(1 if d < 0 else d for d in shape)
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)


def _write_layer_info(trt, logger, blob, engine_path: Path) -> None:
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineBuildError(f"{engine_path}: the engine just built does not deserialize")
    info = engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON)
    engine_path.with_suffix(".layers.json").write_text(json.dumps(json.loads(info), indent=1)
                                                       + "\n")
