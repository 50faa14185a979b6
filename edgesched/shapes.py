"""Input shapes as data: a fixed shape or a (min, opt, max) range per model input.

Most exported models have dynamic dimensions (batch, height, width, sequence). Wherever a cost
is estimated or an engine is built, each input needs a shape: costs use `opt`, a TensorRT
optimization profile uses all three, a static engine is built when min == opt == max. An
unknown dimension there is an error naming the model, the input and how to give the shape;
never a 0 or a 1.

Spellings (one parser for the CLI, config files and workload files):
  text   NAME:1x3x640x640                     fixed
         NAME:1x3x320x320/1x3x640x640/1x3x1280x1280   min/opt/max (trtexec's three options)
  YAML   {image: [1, 3, 640, 640]}            fixed
         {image: {min: [1, 3, 320, 320], opt: [1, 3, 640, 640], max: [1, 3, 1280, 1280]}}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from edgesched.errors import EdgeschedError

MAX_RANK = 8
MAX_DIM = 1 << 20          # one dimension; larger is a typo, not a tensor anyone serves
_NAME = re.compile(r"[^\s:]+")


class ShapeError(EdgeschedError, ValueError):
    """A shape that cannot be used; str(e) is one line saying what to write instead."""

    code = "SHAPE_ERROR"


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ShapeError(f"min {_x(self.min)}, opt {_x(self.opt)} and max {_x(self.max)} "
                             "have different ranks")
        if any(not lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max)):
            raise ShapeError(f"min {_x(self.min)} <= opt {_x(self.opt)} <= max {_x(self.max)} "
                             "must hold in every dimension")

    @classmethod
    def fixed_at(cls, shape: Sequence[int]) -> "ShapeRange":
        dims = _dims(shape)
        return cls(dims, dims, dims)

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    @property
    def rank(self) -> int:
        return len(self.opt)

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == self.rank and all(
            lo <= d <= hi for d, lo, hi in zip(shape, self.min, self.max))

    def fits(self, spec_shape: Sequence[int | None]) -> bool:
        """Does a model input declared with `spec_shape` (None: dynamic) allow every shape in
        this range?"""
        return len(spec_shape) == self.rank and all(
            want is None or lo == hi == want
            for want, lo, hi in zip(spec_shape, self.min, self.max))

    def __str__(self) -> str:
        return _x(self.opt) if self.fixed else f"{_x(self.min)}/{_x(self.opt)}/{_x(self.max)}"

    def to_json(self) -> list | dict:
        if self.fixed:
            return list(self.opt)
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, raw: object) -> "ShapeRange":
        """From a YAML/JSON value: a list of sizes, or a {min, opt, max} mapping."""
        if isinstance(raw, Mapping):
            keys = set(raw)
            if keys != {"min", "opt", "max"}:
                raise ShapeError("a range needs exactly the keys min, opt and max, got "
                                 + ", ".join(sorted(map(str, keys))))
            return cls(_dims(raw["min"]), _dims(raw["opt"]), _dims(raw["max"]))
        return cls.fixed_at(raw)


def _dims(shape: object) -> tuple[int, ...]:
    # [] is a scalar's shape (a model's threshold or branch condition input)
    if not isinstance(shape, (list, tuple)) or not len(shape) <= MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM
            for d in shape):
        raise ShapeError(f"a shape is a list of 0 to {MAX_RANK} sizes from 1 to {MAX_DIM}, "
                         f"got {shape!r}")
    return tuple(shape)


def _x(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def parse_text(text: str) -> tuple[str, ShapeRange]:
    """NAME:1x3x640x640 or NAME:MIN/OPT/MAX (each like 1x3x640x640)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not _NAME.fullmatch(name):
        raise ShapeError(f"expected NAME:1x3x640x640 or NAME:MIN/OPT/MAX, got {text!r}")
    parts = dims.split("/")
    if len(parts) not in (1, 3):
        raise ShapeError(f"expected one shape or three (min/opt/max) after {name}:, got "
                         f"{dims!r}")
    try:
        shapes = [tuple(int(d) for d in part.lower().split("x")) for part in parts]
    except ValueError:
        raise ShapeError(f"{name}: sizes are integers joined by 'x' (1x3x640x640), got "
                         f"{dims!r}") from None
    if len(shapes) == 1:
        return name, ShapeRange.fixed_at(shapes[0])
    return name, ShapeRange(_dims(shapes[0]), _dims(shapes[1]), _dims(shapes[2]))


def parse_mapping(raw: object) -> dict[str, ShapeRange]:
    """A `shapes:` value of a config or workload file: input name -> shape or range."""
    if not isinstance(raw, Mapping) or not raw:
        raise ShapeError("shapes: a mapping of input name -> [sizes] or {min, opt, max}")
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ShapeError(f"shapes: {name!r} is not an input name")
        try:
            out[name] = ShapeRange.from_json(value)
        except ShapeError as e:
            raise ShapeError(f"shapes.{name}: {e}") from None
    return out


def check(model: str, inputs: Sequence, shapes: Mapping[str, ShapeRange] | None
          ) -> dict[str, ShapeRange]:
    """The given shapes, checked against `model`'s inputs (TensorSpecs): each names an input
    and fits its declared dims. Unlike `resolve`, a dynamic input may stay without a shape
    (serving on ONNX Runtime accepts whatever the model accepts). ShapeError, one line."""
    shapes = dict(shapes or {})
    specs = {spec.name: spec for spec in inputs}
    for name, given in shapes.items():
        spec = specs.get(name)
        if spec is None:
            raise ShapeError(f"model {model!r} has no input {name!r} (its inputs: "
                             f"{', '.join(sorted(specs))})")
        if not given.fits(spec.shape):
            raise ShapeError(f"model {model!r}: input {name!r} is declared "
                             f"{_declared(spec.shape)}, which shape {given} does not fit")
    return shapes


def resolve(model: str, inputs: Sequence, shapes: Mapping[str, ShapeRange] | None,
            how: str = "--shape {name}:{dims}") -> dict[str, ShapeRange]:
    """Every input of `model` (TensorSpecs) with a shape: fully static inputs as declared,
    the others from `shapes`. ShapeError, one line, for a dynamic input without a shape, a
    shape that contradicts the declared one, or a shape for an input the model lacks. `how`
    says how the user gives a shape where this is called ({name}: the input, {dims}: its
    declared dims with ? for each one to fill in, {list}: the same as [?, 3, ?, ?]), e.g.
    file_hint(source, index) for a config or workload file."""
    shapes = check(model, inputs, shapes)
    out = {}
    for spec in inputs:
        given = shapes.get(spec.name)
        if given is None:
            if any(d is None for d in spec.shape):
                dims = "x".join("?" if d is None else str(d) for d in spec.shape)
                raise ShapeError(f"model {model!r}: input {spec.name!r} has dynamic dimensions "
                                 f"{_declared(spec.shape)}; give its shape with "
                                 + how.format(name=spec.name, dims=dims,
                                              list=_declared(spec.shape)))
            out[spec.name] = ShapeRange.fixed_at(spec.shape)
            continue
        out[spec.name] = given
    return out


def file_hint(source: str, index: int) -> str:
    """A `how` for resolve: where a config or workload file takes the shape."""
    where = str(source).replace("{", "{{").replace("}", "}}")
    return (f"`shapes: {{{{{{name}}: {{list}}}}}}` (a size for each ?) under models[{index}] "
            f"in {where}")


def at(shapes: Mapping[str, ShapeRange], point: str) -> dict[str, ShapeRange]:
    """Each range fixed at one of its points ("min", "opt" or "max")."""
    if point not in ("min", "opt", "max"):
        raise ValueError(f"point must be min, opt or max, got {point!r}")
    return {name: ShapeRange.fixed_at(getattr(r, point)) for name, r in shapes.items()}


def span(lo: Sequence[int], mid: Sequence[int], hi: Sequence[int]) -> ShapeRange:
    """The range of a tensor seen at three input points: elementwise min and max around `mid`
    (a tensor need not grow with the input, e.g. a Reshape that trades one dim for another)."""
    lo, mid, hi = _dims(lo), _dims(mid), _dims(hi)
    if not len(lo) == len(mid) == len(hi):
        raise ShapeError(f"{_x(lo)}, {_x(mid)} and {_x(hi)} have different ranks")
    return ShapeRange(tuple(map(min, lo, mid, hi)), mid, tuple(map(max, lo, mid, hi)))


def to_json(shapes: Mapping[str, ShapeRange]) -> dict:
    """name -> ShapeRange.to_json(), for manifests and profile meta."""
    return {name: r.to_json() for name, r in shapes.items()}


def _declared(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
