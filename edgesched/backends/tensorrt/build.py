"""Building TensorRT engines from ONNX slices: what `edgesched build` runs on the device.

Shapes: an input given a fixed shape has it set on the network (a static engine, no profile);
an input given a range gets it in `profiles` identical optimization profiles, one per
execution context the server will run at once (contexts used concurrently must not share a
profile). A dynamic input with no shape is an error: TensorRT cannot build it.

Precision, per TensorRT version (NvInfer.h of 8.6.1, 10.x, 10.12, 11.0):
  - 8.6 and 10.x: `BuilderFlag.FP16` lets layers run in FP16; `BuilderFlag.INT8` in INT8, with
    scales from Q/DQ nodes in the ONNX (explicit quantization) or from an
    `IInt8EntropyCalibrator2` (calibrator.py) for models without them;
  - 10.12 deprecates both flags (strong typing supersedes them); they still work through 10.x;
  - 11 has neither flag nor any calibrator: every network is strongly typed, precision comes
    from the ONNX types and Q/DQ nodes. `--fp16` there needs a model already in FP16 (then it
    asks for nothing more); calibration is refused with what to do instead.
Every engine gets a tag beside it (tags.py): the TensorRT version and compute capability that
built it, its DLA core, precision, profiles, shapes and the command that rebuilds it.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from edgesched.backends.tensorrt import cuda_streams, tags
from edgesched.errors import BackendUnavailable, EngineBuildError
from edgesched.shapes import ShapeRange

WORKSPACE_BYTES = 1 << 30          # builder scratch limit; Jetson shares DRAM with the CPU
MAX_PROFILES = 64                  # build time grows with each one (its own tactic search)
_FLOAT, _FLOAT16 = 1, 10           # onnx.TensorProto.FLOAT / FLOAT16




@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    int8: bool = False             # Q/DQ scales, or calibration samples handed to build_engine
    dla_core: int | None = None    # DLA core index; layers DLA cannot run fall back to the GPU
    workspace_bytes: int = WORKSPACE_BYTES
    profiles: int = 1              # optimization profiles for ranges: one per served instance

    def __post_init__(self) -> None:
        # Checked here, not at build time, so a wrong command fails before slicing, off-device.
        if self.dla_core is not None and not (self.fp16 or self.int8):
            raise EngineBuildError("--dla needs --fp16 or --int8: DLA runs FP16 or INT8 only")
        if not 1 <= self.profiles <= MAX_PROFILES:
            raise EngineBuildError(f"--instances: expected 1..{MAX_PROFILES} optimization "
                                   f"profiles, got {self.profiles}")

    @property
    def precision(self) -> tuple[str, ...]:
        return ("fp16",) * self.fp16 + ("int8",) * self.int8


def available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _import_trt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("tensorrt is not importable (it comes with JetPack on a "
                                 "Jetson)") from None
    return tensorrt


def _release(trt) -> tuple[int, ...]:
    return tags.release(str(trt.__version__))


def version() -> str:
    return str(_import_trt().__version__)


def precision_notes(options: BuildOptions) -> list[str]:
    """What this TensorRT does with the precision options (for the build report)."""
    trt = _import_trt()
    v, notes = _release(trt), []
    if (options.fp16 or options.int8) and (10, 12) <= v and \
            hasattr(trt.BuilderFlag, "FP16"):
        notes.append(f"TensorRT {trt.__version__} deprecates BuilderFlag.FP16/INT8 (strongly "
                     "typed networks supersede them); they still apply through 10.x")
    if options.fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        notes.append(f"TensorRT {trt.__version__} networks are strongly typed: FP16 comes from "
                     "the model's own FP16 types")
    return notes


def device_identity() -> tuple[str, str]:
    """(GPU name, compute capability "8.7") of device 0: what engines built here run on."""
    try:
        name, (major, minor) = cuda_streams.open_driver().device_identity(0)
    except Exception as e:   # no driver, no device: TensorRT could not build either
        text = str(e).strip().splitlines()
        raise EngineBuildError("cannot read the GPU's compute capability (to tag the engines): "
                               + (text[0] if text else type(e).__name__)) from None
    return name, f"{major}.{minor}"


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions,
                 shapes: Mapping[str, ShapeRange] | None = None, calibration=None,
                 command: str | None = None) -> Path:
    """Build one serialized engine; write its layer information (X.layers.json) and its tag
    (X.engine.json) beside it. `shapes`: input -> fixed shape or range, needed for every
    dynamic input. `calibration` (calibrator.Calibration, with options.int8): samples for an
    INT8 calibration; options.int8 without it means the ONNX has Q/DQ nodes. `command`: the
    `edgesched build` command line to record for rebuilding."""
    trt = _import_trt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    device, compute_capability = device_identity()
    data = onnx_path.read_bytes()
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
    if options.fp16 and fp16_flag is None and not _fp16_typed(data):
        raise EngineBuildError(
            f"{onnx_path}: --fp16: TensorRT {trt.__version__} has no FP16 builder flag (networks "
            "are strongly typed: precision comes from the ONNX types) and this model has FP32 "
            "weights; convert it to FP16 first (TensorRT Model Optimizer's AutoCast, or "
            "onnxconverter-common's float16) and build that")
    if calibration is not None and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise EngineBuildError(
            f"{onnx_path}: TensorRT {trt.__version__} has no INT8 calibration (implicit "
            "quantization is gone); quantize the model to Q/DQ first (TensorRT Model "
            "Optimizer) and build it with --int8 alone")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10+ networks are always explicit-batch (11 has no such flag); 8.6 needs it.
    flags = 0 if _release(trt) >= (10,) else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no detail"]
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse it: "
                               f"{errors[0].splitlines()[0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED   # layer info for calibrate
    if options.fp16 and fp16_flag is not None:
        config.set_flag(fp16_flag)
    if options.int8 and hasattr(trt.BuilderFlag, "INT8"):          # 11: Q/DQ types suffice
        config.set_flag(trt.BuilderFlag.INT8)
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise EngineBuildError(f"--dla {options.dla_core}: this device has "
                                   f"{builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    given = dict(shapes or {})
    profiles, sample_shapes = _set_shapes(builder, network, config, given, options, onnx_path)
    if calibration is not None:
        from edgesched.backends.tensorrt.calibrator import calibrating
        dtypes = {network.get_input(i).name: trt.nptype(network.get_input(i).dtype)
                  for i in range(network.num_inputs)}
        with calibrating(trt, calibration, sample_shapes, dtypes, onnx_path) as calibrator:
            with warnings.catch_warnings():    # 10.1+ warns: deprecated, and we know it
                warnings.simplefilter("ignore", DeprecationWarning)
                config.int8_calibrator = calibrator
                if profiles:      # a dynamic network calibrates at a profile's opt shapes
                    config.set_calibration_profile(profiles[0])
            blob = builder.build_serialized_network(network, config)
    else:
        blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log "
                               "above)")
    engine_path.write_bytes(bytes(blob))
    _write_layer_info(trt, logger, blob, engine_path, options.dla_core)
    tags.write_tag(engine_path, tags.EngineTag(
        str(trt.__version__), compute_capability, device, options.dla_core, options.precision,
        len(profiles), {n: r for n, r in given.items()}, command))
    return engine_path


def _declared(dims) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in dims) + "]"


def _set_shapes(builder, network, config, shapes: dict[str, ShapeRange],
                options: BuildOptions, onnx_path: Path) -> tuple[list, dict]:
    """Fixed shapes onto the network inputs, ranges into `options.profiles` profiles. Returns
    (the profiles added, input -> the shape calibration samples have: fixed, or opt)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    for name in shapes:
        if name not in names:
            raise EngineBuildError(f"{onnx_path}: --shape {name}: no such input (its inputs: "
                                   f"{', '.join(names)})")
    ranges, sample_shapes = {}, {}
    for tensor in inputs:
        dims = tuple(int(d) for d in tensor.shape)
        given = shapes.get(tensor.name)
        if given is None:
            if any(d < 0 for d in dims):
                example = "x".join("N" if d < 0 else str(d) for d in dims)
                raise EngineBuildError(
                    f"{onnx_path}: input {tensor.name!r} has dynamic dimensions "
                    f"{_declared(dims)}; give its shape with --shape {tensor.name}:{example} "
                    f"(or --shape {tensor.name}:MIN/OPT/MAX for a range)")
            sample_shapes[tensor.name] = dims
            continue
        if not given.fits([None if d < 0 else d for d in dims]):
            raise EngineBuildError(f"{onnx_path}: input {tensor.name!r} is {_declared(dims)}, "
                                   f"which --shape {tensor.name}:{given} does not fit")
        sample_shapes[tensor.name] = given.opt
        if not given.fixed:
            ranges[tensor.name] = given
        elif any(d < 0 for d in dims):
            tensor.shape = given.opt            # fixed: a static engine needs no profile
    profiles = []
    for _ in range(options.profiles if ranges else 0):
        profile = builder.create_optimization_profile()
        for name, r in ranges.items():
            profile.set_shape(name, r.min, r.opt, r.max)
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"{onnx_path}: TensorRT refused the optimization profile "
                                   + ", ".join(f"{n}:{r}" for n, r in ranges.items()))
        profiles.append(profile)
    return profiles, sample_shapes


def _fp16_typed(data: bytes) -> bool:
    """Does the ONNX model carry FP16 weights and no FP32 ones (what a strongly typed network
    needs to run in FP16)?"""
    import onnx
    model = onnx.load_from_string(data)
    kinds = {t.data_type for t in model.graph.initializer}
    kinds |= {v.type.tensor_type.elem_type for v in model.graph.input}
    return _FLOAT16 in kinds and not any(t.data_type == _FLOAT for t in model.graph.initializer)


def is_quantized(model_path: Path) -> bool:
    """Has the ONNX model Q/DQ nodes (explicit quantization)? Reads the graph only."""
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    return bool({"QuantizeLinear", "DequantizeLinear"} & ops)


def _write_layer_info(trt, logger, blob, engine_path: Path, dla_core: int | None) -> None:
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core          # a DLA engine deserializes onto its own core
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineBuildError(f"{engine_path}: the engine just built does not deserialize")
    info = engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON)
    engine_path.with_suffix(".layers.json").write_text(json.dumps(json.loads(info), indent=1)
                                                       + "\n")
