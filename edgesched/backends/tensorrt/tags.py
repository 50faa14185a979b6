"""What built an engine, written beside it (`X.engine` -> `X.engine.json`) and checked at load.

A serialized engine runs only under the TensorRT version that built it and on GPUs of the same
compute capability (engines are not built hardware- or version-compatible here). Deserializing
a mismatched one fails deep in TensorRT, or worse, loads and misbehaves, so the backend refuses
it first, in one line that gives the command to rebuild it.

{"tensorrt": "10.3.0", "compute_capability": "8.7", "device": name, "dla_core": k | null,
 "precision": ["fp16", "int8"], "profiles": n (0: static shapes), "shapes": {input: shape},
 "command": the `edgesched build` command that wrote it, or null}
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgesched.errors import ModelLoadError
from edgesched.shapes import ShapeError, ShapeRange

SUFFIX = ".json"


@dataclass(frozen=True)
class EngineTag:
    tensorrt: str                          # tensorrt.__version__ of the builder
    compute_capability: str                # "8.7"
    device: str = ""                       # the GPU's name, for the message only
    dla_core: int | None = None            # the DLA core it was built for; None: GPU
    precision: tuple[str, ...] = ()
    profiles: int = 0                      # optimization profiles; 0: a static engine
    shapes: dict[str, ShapeRange] = field(default_factory=dict, hash=False)
    command: str | None = None

    def to_json(self) -> dict:
        return {"tensorrt": self.tensorrt, "compute_capability": self.compute_capability,
                "device": self.device, "dla_core": self.dla_core,
                "precision": list(self.precision), "profiles": self.profiles,
                "shapes": {n: r.to_json() for n, r in self.shapes.items()},
                "command": self.command}


def tag_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SUFFIX)


def write_tag(engine: Path, tag: EngineTag) -> Path:
    path = tag_path(engine)
    path.write_text(json.dumps(tag.to_json(), indent=1) + "\n")
    return path


def read_tag(engine: Path) -> EngineTag | None:
    """The engine's tag; None when it has none (built by trtexec or an older edgesched)."""
    path = tag_path(engine)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable engine tag: {str(e).splitlines()[0]}") \
            from None
    try:
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        core = raw.get("dla_core")
        if core is not None and (not isinstance(core, int) or isinstance(core, bool) or core < 0):
            raise ValueError(f"dla_core must be null or a core index, got {core!r}")
        return EngineTag(str(raw["tensorrt"]), str(raw["compute_capability"]),
                         str(raw.get("device") or ""), core,
                         tuple(str(p) for p in raw.get("precision") or ()),
                         int(raw.get("profiles") or 0),
                         {str(n): ShapeRange.from_json(v)
                          for n, v in (raw.get("shapes") or {}).items()},
                         raw.get("command") if isinstance(raw.get("command"), str) else None)
    except (KeyError, TypeError, ValueError, ShapeError) as e:
        raise ModelLoadError(f"{path}: not a valid engine tag: {e}") from None


def release(version: str) -> tuple[int, ...]:
    """major.minor.patch of a TensorRT version ("10.7.0.post1" -> (10, 7, 0)): the build number
    and Python packaging suffixes do not change the engine format."""
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def mismatch(tag: EngineTag, tensorrt: str, compute_capability: str) -> str | None:
    """Why this machine cannot run an engine with `tag`; None when it can."""
    if release(tag.tensorrt) != release(tensorrt):
        return f"built by TensorRT {tag.tensorrt}, this is TensorRT {tensorrt}"
    if tag.compute_capability != compute_capability:
        where = f" ({tag.device})" if tag.device else ""
        return (f"built for compute capability {tag.compute_capability}{where}, this GPU is "
                f"{compute_capability}")
    return None


def rebuild_hint(tag: EngineTag | None) -> str:
    if tag is not None and tag.command:
        return f"rebuild it here: {tag.command}"
    return "rebuild it on this device with `edgesched build`"
