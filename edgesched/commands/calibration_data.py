"""Calibration samples for `edgesched build --int8 --calibration-data DIR`.

DIR holds one NAME.npy per model input (a "/" in the name is written "_"): its samples
concatenated along the first axis. For an input built at 1x3x640x640 an array of shape
(N, 3, 640, 640) is N samples; at 8x3x640x640, (8N, 3, 640, 640) is N. Every input has the same
number of samples; sample i of every input together is one calibration run. An input with a
range calibrates at its opt shape. Files are memory-mapped, so the set may exceed RAM.

Slice 0 calibrates on the samples themselves; a later slice on the tensors that cross its cut,
which ONNX Runtime computes from each sample by running the slices before it (on the CPU,
one sample at a time: memory stays at one sample's tensors).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from edgesched.backends.tensorrt import EngineBuildError
from edgesched.modelfiles.manifest import Manifest
from edgesched.shapes import ShapeRange

FORMAT = ("a directory of NAME.npy files, one per model input, each the samples concatenated "
          "along the first axis")


def file_name(input_name: str) -> str:
    return input_name.replace("/", "_") + ".npy"


def _x(shape) -> str:
    return "x".join(map(str, shape))


class ModelSamples:
    """Sample i of every model input, at the shape each one is built (calibrated) for."""

    def __init__(self, directory: Path, shapes: Mapping[str, tuple[int, ...]],
                 dtypes: Mapping[str, np.dtype]):
        directory = Path(directory)
        if not directory.is_dir():
            raise EngineBuildError(f"--calibration-data {directory}: not a directory ({FORMAT})")
        expected = {file_name(n): n for n in shapes}
        for path in sorted(directory.glob("*.npy")):
            if path.name not in expected:
                raise EngineBuildError(f"{path}: no model input is named {path.stem!r} (the "
                                       f"inputs: {', '.join(shapes)})")
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.dtypes = dict(dtypes)
        self._arrays: dict[str, np.ndarray] = {}
        counts = {}
        for name, shape in self.shapes.items():
            path = directory / file_name(name)
            batch = shape[0] if shape else 1
            want = f"({'N' if batch == 1 else f'{batch}N'}, {', '.join(map(str, shape[1:]))})"
            if not path.is_file():
                raise EngineBuildError(f"--calibration-data {directory}: no {path.name} for "
                                       f"input {name!r}, built at {_x(shape)}: an array {want} "
                                       "holds N samples")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise EngineBuildError(f"{path}: not a .npy array: "
                                       f"{str(e).splitlines()[0]}") from None
            rows = shape[1:] if shape else ()
            if array.ndim != max(len(shape), 1) or tuple(array.shape[1:]) != tuple(rows) or \
                    array.shape[0] % batch or not array.shape[0]:
                raise EngineBuildError(f"{path}: shape {tuple(array.shape)}; input {name!r} is "
                                       f"built at {_x(shape)}, so its samples are {want}")
            self._arrays[name] = array
            counts[name] = array.shape[0] // batch
        if len(set(counts.values())) > 1:
            raise EngineBuildError(f"--calibration-data {directory}: the inputs have different "
                                   "numbers of samples: "
                                   + ", ".join(f"{n} {c}" for n, c in counts.items()))
        self.count = next(iter(counts.values()), 0)
        self.fingerprint = hashlib.sha256(json.dumps(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in directory.glob("*.npy"))).encode()).hexdigest()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        out = {}
        for name, shape in self.shapes.items():
            batch = shape[0] if shape else 1
            rows = self._arrays[name][i * batch:(i + 1) * batch]
            out[name] = np.asarray(rows, self.dtypes[name]).reshape(shape)
        return out


def model_samples(directory: Path, manifest: Manifest) -> ModelSamples:
    """The samples of `manifest`'s model inputs, at their fixed shape or opt."""
    shapes: dict[str, ShapeRange] = dict(manifest.shapes)
    calibrate_at = {}
    for spec in manifest.inputs:
        given = shapes.get(spec.name)
        calibrate_at[spec.name] = given.opt if given is not None else \
            tuple(d or 1 for d in spec.shape)
    return ModelSamples(directory, calibrate_at, {t.name: t.np_dtype for t in manifest.inputs})


class SliceSamples:
    """Slice `index`'s inputs for each sample: model inputs as loaded, tensors crossing a cut
    computed by ONNX Runtime running the slices before it."""

    def __init__(self, manifest: Manifest, index: int, samples: ModelSamples, sessions: dict):
        self._manifest, self._index, self._samples = manifest, index, samples
        self._sessions = sessions            # slice index -> InferenceSession, shared
        entries = manifest.slices
        self._needed = set(entries[index].inputs)
        if index and not self._needed <= set(samples.shapes):
            for entry in entries[:index]:
                if entry.index not in sessions:
                    sessions[entry.index] = _session(manifest.slice_path(entry), index)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        tensors = self._samples[i]
        if not self._needed <= set(tensors):
            for entry in self._manifest.slices[:self._index]:
                session = self._sessions[entry.index]
                names = [o.name for o in session.get_outputs()]
                outputs = session.run(names, {n: tensors[n] for n in entry.inputs})
                tensors.update(zip(names, outputs))
        return {n: tensors[n] for n in self._manifest.slices[self._index].inputs}

    def cache_key(self) -> str:
        """Changes with the slice's file and the samples: a stale cache is never reused."""
        entry = self._manifest.slices[self._index]
        digest = hashlib.sha256(self._manifest.slice_path(entry).read_bytes())
        digest.update(self._samples.fingerprint.encode())
        digest.update(json.dumps({n: list(s) for n, s in self._samples.shapes.items()},
                                 sort_keys=True).encode())
        return digest.hexdigest()[:16]


def _session(path: Path, index: int):
    try:
        import onnxruntime
    except ImportError:
        raise EngineBuildError(f"INT8 calibration of slice {index} needs ONNX Runtime to compute "
                               "the tensors crossing its cut: pip install onnxruntime (or build "
                               "with --slices 1)") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def cache_path(out_dir: Path, index: int, key: str) -> Path:
    """out_dir/calibration/slice_KK-KEY.cache; older caches of that slice are removed."""
    folder = Path(out_dir) / "calibration"
    for stale in folder.glob(f"slice_{index:02d}-*.cache"):
        if stale.name != f"slice_{index:02d}-{key}.cache":
            stale.unlink()
    return folder / f"slice_{index:02d}-{key}.cache"
