"""`edgesched build`: slice an ONNX model, and build a TensorRT engine per slice where possible."""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Mapping, TextIO

from edgesched.backends import tensorrt
from edgesched.commands import calibration_data as calib
from edgesched.commands.progress import Progress
from edgesched.commands.table import format_table
from edgesched.modelfiles.manifest import SliceEntry, write_manifest
from edgesched.modelfiles.slicing import slice_model
from edgesched.shapes import ShapeRange

# The manifest records each slice's DLA core where its entries have the field; every engine's
# tag (backends/tensorrt/tags.py) records it too.


def build(model: Path, parts: int, out_dir: Path, name: str | None = None,
          options: tensorrt.BuildOptions = tensorrt.BuildOptions(),
          progress: TextIO | None = None, shapes: Mapping[str, ShapeRange] | None = None,
          calibration_data: Path | None = None, measured: Path | None = None) -> str:
    """Write the slices (and engines); return the report to print. `shapes`: model input ->
    fixed shape or range (needed for every dynamic input); `calibration_data`: a directory of
    samples for INT8 calibration (commands/calibration_data.py), with options.int8;
    `measured`: a profile whose node_us (TensorRT calibration) the cuts are balanced on."""
    shapes = dict(shapes or {})
    _check_int8(Path(model), options, calibration_data)
    measured_us = _measured_us(Path(measured), name or Path(model).stem) if measured else None
    manifest, plan = slice_model(model, parts, out_dir, name, shapes=shapes,
                                 measured_us=measured_us)
    basis = (f"on {len(measured_us)} measured node times from {measured}" if measured_us
             else "estimated on an AGX Orin roofline")
    lines = [f"{manifest.model}: {len(manifest.slices)} slices in {out_dir} "
             f"(balance max/mean {plan.balance:.2f}, {basis})"]
    lines += [f"note: {n}" for n in plan.notes]
    crossing = ("-",) + tuple(", ".join(c) for c in plan.crossing)
    lines.append(format_table(
        ["slice", "nodes", "GFLOP", "est_us", "receives"],
        [[s.file, s.cost["nodes"], s.cost["flops"] / 1e9, s.cost["est_us"], crossing[s.index]]
         for s in manifest.slices]))
    samples = None
    if calibration_data is not None:       # checked here too: a bad set fails off the device
        samples = calib.model_samples(Path(calibration_data), manifest)
    if not tensorrt.available():
        lines.append("TensorRT is not importable here: the slices are ready; build their engines "
                     "on the device with the same command.")
        return "\n".join(lines)
    command = _command(model, parts, out_dir, name, options, shapes, calibration_data)
    bar = Progress(len(manifest.slices), "engines", progress)
    entries, sessions = [], {}
    for entry in manifest.slices:
        engine = Path(entry.file).with_suffix(".engine").name
        calibration = None
        if samples is not None:
            from edgesched.backends.tensorrt.calibrator import Calibration
            feed = calib.SliceSamples(manifest, entry.index, samples, sessions)
            calibration = Calibration(feed, calib.cache_path(out_dir, entry.index,
                                                             feed.cache_key()))
        tensorrt.build_engine(manifest.slice_path(entry), out_dir / engine, options,
                              shapes=_slice_shapes(entry, shapes), calibration=calibration,
                              command=command)
        extra = {"dla_core": options.dla_core}
        entries.append(dataclasses.replace(entry, engine=engine, **extra))
        bar.step(engine)
    write_manifest(dataclasses.replace(manifest, slices=tuple(entries)))
    precision = [p for p, on in (("FP16", options.fp16), ("INT8", options.int8)) if on]
    if options.int8:
        precision[-1] += f" calibrated on {len(samples)} samples" if samples is not None \
            else " from Q/DQ"
    ranged = any(not r.fixed for e in entries for r in _slice_shapes(e, shapes).values())
    lines.append(f"built {len(entries)} TensorRT {tensorrt.version()} engines"
                 + (f" ({', '.join(precision)})" if precision else "")
                 + (f" for DLA core {options.dla_core}" if options.dla_core is not None else "")
                 + (f", {options.profiles} optimization profile(s) each (serve with instances "
                    f"<= {options.profiles})" if ranged else ""))
    lines += [f"note: {n}" for n in tensorrt.precision_notes(options)]
    return "\n".join(lines)


def _measured_us(path: Path, model: str) -> dict[str, float]:
    """ONNX node -> measured us of `model` in the profile at `path` (its meta.node_us)."""
    from edgesched.sched.profile import Profile
    try:
        node_us = Profile.load(path).meta.get("node_us") or {}
    except (OSError, ValueError) as e:
        raise tensorrt.EngineBuildError(f"--measured {path}: not a readable profile "
                                        f"({(str(e).splitlines() or [''])[0]})") from None
    if model not in node_us:
        known = ", ".join(sorted(node_us)) or "none: calibrate on TensorRT first"
        raise tensorrt.EngineBuildError(f"--measured {path}: no per-node times for model "
                                        f"{model!r} (it has {known}; --name picks the model)")
    return {str(k): float(v) for k, v in node_us[model].items()}


def _slice_shapes(entry: SliceEntry, shapes: Mapping[str, ShapeRange]) -> dict[str, ShapeRange]:
    """The shapes a slice's engine is built for: the manifest's for every input it reads (cut
    tensors included); an entry without them (a slicer that records none) gives the model
    inputs' as passed."""
    if entry.shapes:
        return dict(entry.shapes)
    return {n: r for n, r in shapes.items() if n in entry.inputs}


def _check_int8(model: Path, options: tensorrt.BuildOptions,
                calibration_data: Path | None) -> None:
    """Before slicing: --int8 takes either a Q/DQ model or calibration samples, not both."""
    if calibration_data is not None and not options.int8:
        raise tensorrt.EngineBuildError("--calibration-data is for INT8 calibration: add --int8")
    if not options.int8 or not model.is_file():      # slicing says what is wrong with a path
        return
    quantized = tensorrt.is_quantized(model)
    if quantized and calibration_data is not None:
        raise tensorrt.EngineBuildError(f"{model}: has Q/DQ nodes (explicitly quantized), so its "
                                        "scales are set: build it with --int8 alone, without "
                                        "--calibration-data")
    if not quantized and calibration_data is None:
        raise tensorrt.EngineBuildError(f"{model}: has no Q/DQ nodes: --int8 needs "
                                        "--calibration-data DIR (sample inputs) to calibrate it")


def _command(model: Path, parts: int, out_dir: Path, name: str | None,
             options: tensorrt.BuildOptions, shapes: Mapping[str, ShapeRange],
             calibration_data: Path | None) -> str:
    """The command line that rebuilds these engines (recorded in each engine's tag)."""
    argv = ["edgesched", "build", str(Path(model).resolve()), "--slices", str(parts), "--out",
            str(Path(out_dir).resolve())]
    argv += ["--name", name] if name else []
    for input_name, r in shapes.items():
        argv += ["--shape", f"{input_name}:{r}"]
    argv += ["--fp16"] if options.fp16 else []
    argv += ["--int8"] if options.int8 else []
    if calibration_data is not None:
        argv += ["--calibration-data", str(Path(calibration_data).resolve())]
    if options.dla_core is not None:
        argv += ["--dla", str(options.dla_core)]
    if options.profiles != 1:
        argv += ["--instances", str(options.profiles)]
    return shlex.join(argv)
