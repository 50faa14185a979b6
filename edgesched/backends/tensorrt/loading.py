"""Loading engine files and sliced directories for the TensorRT backend.

Before an engine is deserialized its tag (tags.py) is checked against this TensorRT and this
GPU, and the runtime's `DLA_core` is set: it chooses the core a DLA engine runs on, and its
default (-1) runs every DLA engine on core 0 whatever it was built for. The caller has the
primary context current around `load`.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.backends import blobs
from edgesched.backends.blobs import Blobs
from edgesched.backends.tensorrt import tags
from edgesched.backends.tensorrt.slices import Slice
from edgesched.backends.tensorrt.state import Model
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.manifest import MANIFEST_NAME, read_manifest
from edgesched.types import TensorSpec

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
log = logging.getLogger("edgesched.tensorrt")


class Loader:
    """Deserializes each engine file once per DLA core, however many models or slices use it.
    `select_on` / `synchronize`: the stream execution contexts select their profiles on."""

    def __init__(self, trt, runtime, compute_capability: str, select_on: int,
                 synchronize: Callable[[int], None]):
        self._trt, self._runtime = trt, runtime
        self.compute_capability = compute_capability
        self._select_on, self._synchronize = select_on, synchronize
        self._engines: dict[tuple[Path, int | None], object] = {}
        self._sizes: dict[tuple[Path, int | None], int] = {}   # serialized bytes per engine
        # Loads run off the engine thread (a reload, the memory budget) while the engine
        # thread unloads: the two caches change under this lock (never held while a blob
        # deserializes, so an unload does not wait for a load).
        self._cache = threading.Lock()
        self.blobs: Blobs | None = None      # engine files kept in host RAM (blobs.py)

    def clear(self) -> None:
        """Drop the engines, then the runtime (each engine keeps its runtime alive through
        the bindings, so the runtime goes with the last engine whichever order)."""
        with self._cache:
            self._engines.clear()
            self._sizes.clear()
        self._runtime = None

    def release(self, model: Model, others) -> None:
        """Free an unloaded model: its execution contexts first (each holds its engine), then
        the engines no model in `others` still uses. The primary context must be current."""
        for piece in model.slices:
            piece.free.clear()
            piece.contexts.clear()
        self.purge(others)
        for piece in model.slices:
            piece.engine = None

    def purge(self, others) -> None:
        """Drop the cached engines no model in `others` uses (their last reference, unless
        a live context still holds one). The primary context must be current."""
        in_use = {id(piece.engine) for m in others for piece in m.slices}
        with self._cache:
            for key in [k for k, e in self._engines.items() if id(e) not in in_use]:
                del self._engines[key], self._sizes[key]

    def load(self, path: Path, instances: int) -> Model:
        if path.is_dir():
            return self._sliced(path, instances)
        if path.suffix in ENGINE_SUFFIXES and self._readable(path):
            piece = self._slice(path, instances, None)
            return Model([piece], [piece.spec(n) for n in piece.inputs],
                         [piece.spec(n) for n in piece.outputs])
        if path.suffix == ".onnx":
            raise ModelLoadError(f"{path}: an ONNX model; the tensorrt backend serves engines: "
                                 "run `edgesched build` on the device")
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or directory")
        raise ModelLoadError(f"{path}: not a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) "
                             "nor a sliced directory with manifest.json")

    def _readable(self, path: Path) -> bool:
        """On disk, or its bytes kept in host RAM (a reload needs no engine file)."""
        return path.is_file() or (self.blobs is not None and path in self.blobs)

    def _slice(self, path: Path, instances: int, dla_core: int | None) -> Slice:
        engine, size = self._engine(path, dla_core)
        piece = Slice(self._trt, engine, instances, path, self._select_on, self._synchronize)
        piece.serialized_bytes = size
        return piece

    def _engine(self, path: Path, dla_core: int | None):
        """`dla_core`: the manifest's choice of core (None: the one the tag records)."""
        tag = tags.read_tag(path)
        if tag is None:
            log.info("%s: no %s tag; cannot check what built it", path, tags.SUFFIX)
        else:
            why = tags.mismatch(tag, str(self._trt.__version__), self.compute_capability)
            if why:
                raise ModelLoadError(f"{path}: {why}; {tags.rebuild_hint(tag)}")
            if dla_core is None:
                dla_core = tag.dla_core
        key = (path.resolve(), dla_core)
        with self._cache:
            cached = self._engines.get(key), self._sizes.get(key)
        if cached[0] is None:
            blob = blobs.read(self.blobs, path)
            if dla_core is not None:
                cores = int(self._runtime.num_DLA_cores)
                if not 0 <= dla_core < cores:
                    raise ModelLoadError(f"{path}: built for DLA core {dla_core}, but this "
                                         f"device has {cores} DLA cores")
                self._runtime.DLA_core = dla_core
            try:
                engine = self._runtime.deserialize_cuda_engine(blob)
            except Exception:  # the bindings raise on some malformed blobs instead of None
                engine = None
            if engine is None:
                raise ModelLoadError(
                    f"{path}: TensorRT {self._trt.__version__} cannot deserialize it: most likely "
                    "built for another TensorRT version or another GPU; "
                    + tags.rebuild_hint(tag))
            with self._cache:
                self._engines[key], self._sizes[key] = engine, len(blob)
            cached = engine, len(blob)
        return cached

    def _sliced(self, directory: Path, instances: int) -> Model:
        if not (directory / MANIFEST_NAME).is_file():
            raise ModelLoadError(f"{directory}: a directory without {MANIFEST_NAME}")
        manifest = read_manifest(directory)
        missing = [e for e in manifest.slices if not e.engine]
        if missing:
            raise ModelLoadError(f"{directory}: slice {missing[0].index} ({missing[0].file}) has "
                                 "no TensorRT engine; run `edgesched build` on the device")
        slices: list[Slice] = []
        dtypes: dict[str, np.dtype] = {}
        for entry in manifest.slices:
            path = directory / entry.engine
            if not self._readable(path):
                raise ModelLoadError(f"{path}: no such engine (slices[{entry.index}] in "
                                     f"{MANIFEST_NAME}); run `edgesched build` on the device")
            piece = self._slice(path, instances, entry.dla_core)
            if set(piece.inputs) != set(entry.inputs) or \
                    not set(entry.outputs) <= set(piece.outputs):
                raise ModelLoadError(f"{path}: its inputs/outputs do not match "
                                     f"slices[{entry.index}] in {MANIFEST_NAME}")
            for name, dtype in piece.dtypes.items():
                if dtypes.setdefault(name, dtype) != dtype:
                    raise ModelLoadError(f"{path}: tensor {name!r} is {dtype} here but "
                                         f"{dtypes[name]} in an earlier slice's engine")
            slices.append(piece)
        inputs = tuple(_narrowed(spec, slices) for spec in manifest.inputs)
        return Model(slices, inputs, manifest.outputs)


def _narrowed(spec: TensorSpec, slices: list[Slice]) -> TensorSpec:
    """The model input as the engines take it: a dim the manifest leaves dynamic but an engine
    was built fixed (`--shape`) is that size, so intake refuses other sizes up front."""
    shape = list(spec.shape)
    for piece in slices:
        dims = piece.shapes.get(spec.name)
        if dims is not None and len(dims) == len(shape):
            shape = [d if d is not None or e < 0 else e for d, e in zip(shape, dims)]
    return TensorSpec(spec.name, spec.dtype, tuple(shape))
