"""INT8 calibration for models without Q/DQ nodes: an entropy calibrator fed from samples.

TensorRT's Python calibrator contract (python/src/infer/pyInt8.cpp, 8.6.1 and 10.x; gone in 11):
subclass `trt.IInt8EntropyCalibrator2` and call its `__init__`; `get_batch_size()` (1: the
batch is part of explicit-batch shapes); `get_batch(names)` returns one device pointer per name,
in that order, or None when the samples are used up; `read_calibration_cache()` returns the
bytes of an earlier calibration (then no batch is asked for) or None;
`write_calibration_cache(cache)` receives them as a buffer. TensorRT swallows an exception
raised in any of these (it prints it and treats get_batch as "no more data"), so the feed
keeps the first error and the build raises it after TensorRT returns.

Device memory for the samples comes from pycuda in the primary context (context.py), current
on the building thread for the whole build and around every `get_batch`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgesched.backends.tensorrt import cuda_streams
from edgesched.errors import EdgeschedError, EngineBuildError


@dataclass(frozen=True)
class Calibration:
    """`samples[i]` maps every input of the network to one sample (the shape it is built for:
    a fixed shape, or a range's opt). `cache`: read when it exists (no calibration runs), else
    written once calibration is done."""

    samples: Sequence[Mapping[str, np.ndarray]]
    cache: Path


class _Feed:
    def __init__(self, cuda, primary, calibration: Calibration, shapes: Mapping[str, tuple],
                 dtypes: Mapping[str, type]):
        self._cuda, self._primary, self._calibration = cuda, primary, calibration
        self._shapes = {n: tuple(s) for n, s in shapes.items()}
        self._dtypes = {n: np.dtype(t) for n, t in dtypes.items()}
        self._buffers: dict[str, object] = {}
        self.next_index = 0
        self.error: str | None = None
        for name, shape in self._shapes.items():      # one device buffer per input, reused
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
            self._buffers[name] = cuda.mem_alloc(max(nbytes, 1))

    def free(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()

    def batch(self, names: Sequence[str]) -> list[int] | None:
        if self.error is not None or self.next_index >= len(self._calibration.samples):
            return None
        index = self.next_index
        try:
            sample = self._calibration.samples[index]
            pointers = []
            with self._primary.current():
                for name in names:
                    if name not in sample or name not in self._buffers:
                        raise ValueError(f"no sample for input {name!r}")
                    array = np.ascontiguousarray(sample[name], self._dtypes[name])
                    if array.shape != self._shapes[name]:
                        raise ValueError(f"input {name!r} has shape {array.shape}, the engine "
                                         f"calibrates at {self._shapes[name]}")
                    self._cuda.memcpy_htod(self._buffers[name], array)
                    pointers.append(int(self._buffers[name]))
        except Exception as e:
            text = str(e).strip().splitlines()
            self.error = f"calibration sample {index}: {text[0] if text else type(e).__name__}"
            return None
        self.next_index += 1
        return pointers

    def read_cache(self) -> bytes | None:
        path = self._calibration.cache
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError as e:
            self.error = f"{path}: cannot read the calibration cache: {e.strerror or e}"
            return None

    def write_cache(self, cache) -> None:
        path = self._calibration.cache
        if self.error is not None:          # scales from part of the samples: never reuse them
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(cache))
        except OSError as e:
            self.error = f"{path}: cannot write the calibration cache: {e.strerror or e}"


def _calibrator(trt, feed: _Feed):
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)    # pybind11: the base must be set up

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            return feed.batch(list(names))

        def read_calibration_cache(self):
            return feed.read_cache()

        def write_calibration_cache(self, cache) -> None:
            feed.write_cache(cache)

    return EntropyCalibrator()


@contextlib.contextmanager
def calibrating(trt, calibration: Calibration, shapes: Mapping[str, tuple],
                dtypes: Mapping[str, type], onnx_path: Path):
    """The calibrator to set on the builder config, for the `with` block the build runs in."""
    from edgesched.backends.tensorrt.context import PrimaryContext, import_pycuda
    if not len(calibration.samples) and not calibration.cache.is_file():
        raise EngineBuildError(f"{onnx_path}: INT8 calibration needs at least one sample")
    try:
        cuda = import_pycuda()
        primary = PrimaryContext(cuda, 0, cuda_streams.open_driver())
    except EdgeschedError as e:
        raise EngineBuildError(f"{onnx_path}: INT8 calibration needs device memory for its "
                               f"samples: {e}") from None
    feed = None
    try:
        with primary.current():
            feed = _Feed(cuda, primary, calibration, shapes, dtypes)
            yield _calibrator(trt, feed)
    finally:
        try:
            if feed is not None:
                with primary.current():
                    feed.free()
        finally:
            primary.release()
    if feed.error is not None:
        raise EngineBuildError(f"{onnx_path}: {feed.error}")
