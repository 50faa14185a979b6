"""Numbered model versions, the Triton / TF Serving layout: `det/1/model.onnx`, `det/3/...`.

A model `path:` that is a directory of numbered subdirectories serves its highest version, or
the one pinned with the entry's `version: N`. A version directory holds exactly one model: a
.onnx/.engine/.plan file, or an edgesched sliced directory (manifest.json), either the
version directory itself or one directory inside it. Subdirectories whose names are not
plain decimal numbers (`latest`, `.tmp`, `01`) are ignored, as Triton does. Standard library
only: config.py resolves versions while it checks a file.
"""
from __future__ import annotations

from pathlib import Path

from edgesched.errors import EdgeschedError

MODEL_SUFFIXES = (".onnx", ".engine", ".plan")
MANIFEST = "manifest.json"


class VersionError(EdgeschedError, ValueError):
    """A versioned model directory that cannot be served; str(e) is one line (config.py adds
    the file and key)."""


def is_model(path: Path) -> bool:
    """A model file or a sliced directory (what a config `path:` may name directly)."""
    return (path.is_file() and path.suffix.lower() in MODEL_SUFFIXES
            or path.is_dir() and (path / MANIFEST).is_file())


def numbered(root: Path) -> dict[int, Path]:
    """version -> directory, for the numbered subdirectories of `root`."""
    found = {}
    for child in root.iterdir():
        name = child.name
        if name.isdigit() and name.isascii() and str(int(name)) == name and child.is_dir():
            found[int(name)] = child
    return found


def is_versioned(root: Path) -> bool:
    """A directory that is not itself a sliced model and has a numbered subdirectory."""
    return root.is_dir() and not (root / MANIFEST).is_file() and bool(numbered(root))


def resolve(root: Path, pinned: int | None = None) -> tuple[int, Path]:
    """(version, model path) served from `root`: the pinned version, else the highest."""
    versions = numbered(root) if root.is_dir() else {}
    if not versions:
        raise VersionError(f"{root}, which has no numbered version directories (1/, 2/, ...)")
    if pinned is not None and pinned not in versions:
        raise VersionError(f"version {pinned}, which {root} does not have (it has "
                           f"{', '.join(map(str, sorted(versions)))})")
    version = max(versions) if pinned is None else pinned
    return version, model_in(versions[version], version)


def model_in(directory: Path, version: int) -> Path:
    """The one model a version directory holds."""
    if (directory / MANIFEST).is_file():
        return directory
    found = sorted(p for p in directory.iterdir() if is_model(p))
    if len(found) == 1:
        return found[0]
    if not found:
        raise VersionError(f"version {version} ({directory}), which holds no .onnx, .engine or "
                           ".plan file and no sliced directory with manifest.json")
    raise VersionError(f"version {version} ({directory}), which holds {len(found)} models ("
                       f"{', '.join(p.name for p in found)}): keep one per version directory")


__all__ = ["MODEL_SUFFIXES", "VersionError", "is_model", "is_versioned", "model_in",
           "numbered", "resolve"]
