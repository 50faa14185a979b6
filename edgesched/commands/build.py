"""`edgesched build`: slice an ONNX model, and build a TensorRT engine per slice where possible."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TextIO

from edgesched.backends import tensorrt
from edgesched.commands.progress import Progress
from edgesched.commands.table import format_table
from edgesched.modelfiles.manifest import write_manifest
from edgesched.modelfiles.slicing import slice_model


def build(model: Path, parts: int, out_dir: Path, name: str | None = None,
          options: tensorrt.BuildOptions = tensorrt.BuildOptions(),
          progress: TextIO | None = None) -> str:
    """Write the slices (and engines); return the report to print."""
    manifest, plan = slice_model(model, parts, out_dir, name)
    lines = [f"{manifest.model}: {len(manifest.slices)} slices in {out_dir} "
             f"(balance max/mean {plan.balance:.2f}, estimated on an AGX Orin roofline)"]
    lines += [f"note: {n}" for n in plan.notes]
    crossing = ("-",) + tuple(", ".join(c) for c in plan.crossing)
    lines.append(format_table(
        ["slice", "nodes", "GFLOP", "est_us", "receives"],
        [[s.file, s.cost["nodes"], s.cost["flops"] / 1e9, s.cost["est_us"], crossing[s.index]]
         for s in manifest.slices]))
    if not tensorrt.available():
        lines.append("TensorRT is not importable here: the slices are ready; build their engines "
                     "on the device with the same command.")
        return "\n".join(lines)
    bar = Progress(len(manifest.slices), "engines", progress)
    entries = []
    for entry in manifest.slices:
        engine = Path(entry.file).with_suffix(".engine").name
        tensorrt.build_engine(manifest.slice_path(entry), out_dir / engine, options)
        entries.append(dataclasses.replace(entry, engine=engine))
        bar.step(engine)
    write_manifest(dataclasses.replace(manifest, slices=tuple(entries)))
    lines.append(f"built {len(entries)} TensorRT {tensorrt.version()} engines"
                 + (" (FP16)" if options.fp16 else "")
                 + (f" for DLA core {options.dla_core}" if options.dla_core is not None else ""))
    return "\n".join(lines)
