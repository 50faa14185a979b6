"""Shapes through a model: every tensor's range at the inputs' min/opt/max, a model's input
shapes wherever they come from, and each slice's input shapes.

Ranges come from onnx shape inference run three times (inputs at min, at opt, at max; once
when every input is fixed); a tensor gets a range only where all three runs give every dim.
Used by the slicer (which cuts only where the crossing tensors get one, so every slice input
has a recorded range) and by whatever costs a model: the simulator, estimates, calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import onnx

from edgesched.errors import ModelLoadError
from edgesched.modelfiles.costmodel import tensor_shapes
from edgesched.modelfiles.manifest import MANIFEST_NAME, Manifest, read_manifest
from edgesched.shapes import ShapeError, ShapeRange, at, resolve, span

POINTS = ("min", "opt", "max")


@dataclass(frozen=True)
class _Input:
    """What resolve reads of a model input: its name and declared dims (None: dynamic)."""

    name: str
    shape: tuple[int | None, ...]


def tensor_ranges(model: onnx.ModelProto,
                  shapes: Mapping[str, ShapeRange]) -> dict[str, ShapeRange]:
    """Every tensor whose shape inference gives all dims at each of min, opt and max of
    `shapes` (the graph inputs' ranges) -> its range over them. ShapeError for a dynamic graph
    input `shapes` lacks."""
    if all(r.fixed for r in shapes.values()):
        seen = [tensor_shapes(model, shapes)] * 3
    else:
        seen = [tensor_shapes(model, at(shapes, point)) for point in POINTS]
    out = {}
    for name, opt in seen[1].items():
        lo, hi = seen[0].get(name), seen[2].get(name)
        if lo is None or hi is None or None in (*lo, *opt, *hi) or 0 in (*lo, *opt, *hi):
            continue        # data-dependent (NonZero), unknown, or empty at some point
        try:
            out[name] = span(lo, opt, hi)
        except ShapeError:  # rank changes with the input: no range describes it
            continue
    return out


def declared_inputs(model: onnx.ModelProto) -> tuple[_Input, ...]:
    """A graph's activation inputs (initializers listed as inputs, IR < 4, are weights)."""
    weights = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        tt = vi.type.tensor_type
        out.append(_Input(vi.name, tuple(d.dim_value if d.HasField("dim_value") and
                                         d.dim_value > 0 else None for d in tt.shape.dim)))
    return tuple(out)


def model_shapes(model: str, path: Path, given: Mapping[str, ShapeRange] | None,
                 how: str) -> dict[str, ShapeRange]:
    """The input shapes `model` is costed with: `given` (a config's or workload's `shapes:`),
    else those its sliced directory's manifest records, else the declared static ones. A
    dynamic input left without one is a ShapeError naming the model, the input and `how` the
    user gives it. A bare engine file is taken as given (TensorRT checks it at load)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        manifest = read_manifest(path)
        return resolve(model, manifest.inputs, given or manifest.shapes, how)
    if path.suffix.lower() != ".onnx":
        return dict(given or {})
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf/IO errors: one line naming the file
        raise ModelLoadError(f"{path}: not a valid ONNX model: "
                             f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return resolve(model, declared_inputs(graph), given, how)


def slice_shapes(manifest: Manifest, shapes: Mapping[str, ShapeRange] | None = None,
                 models: list[onnx.ModelProto] | None = None) -> list[dict[str, ShapeRange]]:
    """Each slice's input tensors -> their ranges when the model inputs have `shapes` (None:
    the manifest's). The manifest's own per-slice ranges where they hold for these shapes;
    otherwise (other shapes, a manifest older than shapes) they are propagated slice by slice
    with shape inference. `models`: the slices' ONNX models, if already loaded."""
    shapes = dict(manifest.shapes if shapes is None else shapes)
    if shapes == manifest.shapes and all(set(e.inputs) <= set(e.shapes)
                                         for e in manifest.slices):
        return [{t: e.shapes[t] for t in e.inputs} for e in manifest.slices]
    known, out = dict(shapes), []
    for k, entry in enumerate(manifest.slices):
        graph = models[k] if models is not None else onnx.load(str(manifest.slice_path(entry)))
        given = {t: known[t] for t in entry.inputs if t in known}
        given.update({i.name: ShapeRange.fixed_at(i.shape) for i in declared_inputs(graph)
                      if i.name not in given and None not in i.shape})
        ranges = tensor_ranges(graph, given)
        missing = [t for t in entry.outputs if t not in ranges and t in _later_inputs(manifest, k)]
        if missing:
            raise ShapeError(f"model {manifest.model!r}: shape inference cannot give the shape "
                             f"of {missing[0]!r} (made by slice {k}) for input shapes "
                             + ", ".join(f"{n}:{r}" for n, r in shapes.items()))
        out.append(given)
        known.update({t: ranges[t] for t in entry.outputs if t in ranges})
    return out


def _later_inputs(manifest: Manifest, k: int) -> set[str]:
    return {t for e in manifest.slices[k + 1:] for t in e.inputs}
