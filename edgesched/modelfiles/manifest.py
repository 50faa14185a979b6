"""The sliced-model directory format: `manifest.json` beside one file per slice.

{"model": name, "source": original file, "inputs": [{"name","dtype","shape"}], "outputs": [...],
 "shapes"?: {input: shape}, "slices": [{"index", "file", "inputs": [names], "outputs": [names],
             "cost": {"flops", "bytes", "est_us"?}, "shapes"?: {input: shape}, "engine"?: file,
             "dla_core"?: core}]}
Slice i's inputs are graph inputs or outputs of earlier slices; running the slices in order
reproduces the model's outputs. `read_manifest` checks exactly that, so a backend can trust it.
`shapes` (edgesched.shapes.ShapeRange.to_json: [sizes], or {"min","opt","max"}) are what the
model was sliced and costed for: the top level for the model inputs, each slice's for every
tensor it reads (cut tensors too, inferred at min, opt and max). The slice files themselves
keep the model's dynamic dims. Manifests written before shapes existed load with none.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgesched import dtypes
from edgesched.errors import ModelLoadError
from edgesched.shapes import ShapeError, ShapeRange, to_json
from edgesched.types import TensorSpec, format_shape

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SliceEntry:
    index: int
    file: str                         # relative to the manifest's directory
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cost: dict = field(default_factory=dict, compare=False)
    engine: str | None = None
    # every input tensor -> the shape or range this slice was built for ({}: an old manifest)
    shapes: dict[str, ShapeRange] = field(default_factory=dict, hash=False)
    dla_core: int | None = None       # the DLA core its engine was built for; None: the GPU


@dataclass(frozen=True)
class Manifest:
    model: str
    source: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    slices: tuple[SliceEntry, ...]
    directory: Path
    shapes: dict[str, ShapeRange] = field(default_factory=dict, hash=False)   # model inputs

    def slice_path(self, entry: SliceEntry) -> Path:
        return self.directory / entry.file

    def to_json(self) -> dict:
        return {
            "model": self.model, "source": self.source,
            "inputs": [t.to_wire() for t in self.inputs],
            "outputs": [t.to_wire() for t in self.outputs],
            **({"shapes": to_json(self.shapes)} if self.shapes else {}),
            "slices": [{"index": s.index, "file": s.file, "inputs": list(s.inputs),
                        "outputs": list(s.outputs), "cost": s.cost,
                        **({"shapes": to_json(s.shapes)} if s.shapes else {}),
                        **({"engine": s.engine} if s.engine else {}),
                        **({"dla_core": s.dla_core} if s.dla_core is not None else {})}
                       for s in self.slices],
        }


# A JSON list of sizes (and nulls, dynamic dims) as json.dumps(indent=1) spreads it out.
_SIZES = re.compile(r"\[\s*((?:-?\d+|null)(?:,\s*(?:-?\d+|null))*)\s*\]")


def write_manifest(manifest: Manifest) -> Path:
    path = manifest.directory / MANIFEST_NAME
    text = json.dumps(manifest.to_json(), indent=1)
    # one line per shape ([1, 3, 640, 640]) keeps a manifest with ranges readable
    text = _SIZES.sub(lambda m: "[" + ", ".join(d.strip() for d in m.group(1).split(",")) + "]",
                      text)
    path.write_text(text + "\n")
    return path


def _specs(raw: object, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where} must be a non-empty list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("dtype"), str) or not isinstance(item.get("shape"), list):
            raise ValueError(f"{where}[{i}] needs name, dtype and shape")
        try:
            dtypes.by_name(item["dtype"])
        except dtypes.UnsupportedDtype as e:
            raise ValueError(f"{where}[{i}]: {e}") from None
        if any(isinstance(d, bool) for d in item["shape"]):
            raise ValueError(f"{where}[{i}].shape must hold integers")
        shape = tuple(None if d is None or (isinstance(d, int) and d < 0) else d
                      for d in item["shape"])
        if not all(d is None or isinstance(d, int) for d in shape):
            raise ValueError(f"{where}[{i}].shape must hold integers")
        out.append(TensorSpec(item["name"], item["dtype"], shape))
    return tuple(out)


def _slice(raw: object, i: int) -> SliceEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"slices[{i}] must be an object")
    names = {k: raw.get(k) for k in ("inputs", "outputs")}
    if raw.get("index") != i:
        raise ValueError(f"slices[{i}].index must be {i}")
    if not _is_local_name(raw.get("file")):
        raise ValueError(f"slices[{i}].file must be a file name inside the model directory")
    for key, value in names.items():
        if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
            raise ValueError(f"slices[{i}].{key} must be a non-empty list of tensor names")
    engine = raw.get("engine")
    if engine is not None and not _is_local_name(engine):
        raise ValueError(f"slices[{i}].engine must be a file name inside the model directory")
    cost = raw.get("cost") or {}
    if not isinstance(cost, dict):
        raise ValueError(f"slices[{i}].cost must be an object")
    shapes = _shapes(raw.get("shapes"), f"slices[{i}].shapes")
    unread = sorted(set(shapes) - set(names["inputs"]))
    if unread:
        raise ValueError(f"slices[{i}].shapes names {unread[0]!r}, which the slice does not read")
    dla_core = raw.get("dla_core")
    if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int)
                                 or not 0 <= dla_core <= 7):
        raise ValueError(f"slices[{i}].dla_core must be a DLA core number 0..7")
    return SliceEntry(i, raw["file"], tuple(names["inputs"]), tuple(names["outputs"]), cost,
                      engine, shapes, dla_core)


def _shapes(raw: object, where: str) -> dict[str, ShapeRange]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object of tensor name -> shape")
    try:
        return {str(name): ShapeRange.from_json(value) for name, value in raw.items()}
    except ShapeError as e:
        raise ValueError(f"{where}: {e}") from None


def _is_local_name(name: object) -> bool:
    """A relative path that stays inside the manifest's directory (model files come only from
    the configured directories, never from wherever a manifest points)."""
    if not isinstance(name, str) or not name:
        return False
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise ValueError("top level must be an object with a 'model' name")
        inputs, outputs = _specs(raw.get("inputs"), "inputs"), _specs(raw.get("outputs"), "outputs")
        raw_slices = raw.get("slices")
        if not isinstance(raw_slices, list) or not raw_slices:
            raise ValueError("slices must be a non-empty list")
        slices = tuple(_slice(s, i) for i, s in enumerate(raw_slices))
        shapes = _shapes(raw.get("shapes"), "shapes")
        specs = {t.name: t for t in inputs}
        for name, r in shapes.items():
            if name not in specs:
                raise ValueError(f"shapes names {name!r}, which is not a model input")
            if not r.fits(specs[name].shape):
                raise ValueError(f"shapes.{name}: {r} does not fit the input's declared "
                                 f"{format_shape(specs[name].shape)}")
        available = {t.name for t in inputs}
        for s in slices:
            missing = [n for n in s.inputs if n not in available]
            if missing:
                raise ValueError(f"slices[{s.index}] reads {missing[0]!r}, which no earlier "
                                 "slice produces")
            if not (directory / s.file).is_file():
                raise ValueError(f"slices[{s.index}].file {s.file!r} does not exist")
            available.update(s.outputs)
        unproduced = [t.name for t in outputs if t.name not in available]
        if unproduced:
            raise ValueError(f"model output {unproduced[0]!r} is produced by no slice")
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return Manifest(raw["model"], str(raw.get("source", "")), inputs, outputs, slices, directory,
                    shapes)
