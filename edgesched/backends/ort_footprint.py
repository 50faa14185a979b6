"""What a model loaded on the ONNX Runtime backend holds in memory, for the memory budget.

Measured around the load, in bytes: the growth of this process's resident set (RSS) while the
sessions are created, floored at the model's initializer (weight) bytes. The RSS growth counts
what the sessions really took: their copies of the initializers (pre-packed where ORT packs
them), the graph, the kernels' state and the CPU arena's first blocks. It also counts what
other threads allocated meanwhile (the stream workers keep running) and misses pages the
allocator reused from memory freed earlier (a reload after an unload): the floor keeps such a
load from counting as nearly free, since a session holds every initializer. Activations the
arena grows into on the first runs come later and are not counted. No onnxruntime import here.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from edgesched.backends import blobs as _blobs

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# (resolved path, size, mtime_ns) -> initializer bytes: parsing a large model's protobuf takes
# tenths of a second, and a budget reloads the same files again and again.
_weights: dict[tuple, int] = {}
_lock = threading.Lock()


def rss_bytes() -> int:
    """This process's resident set, bytes (/proc/self/statm; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def initializer_bytes(path: Path, blobs: _blobs.Blobs | None = None) -> int:
    """Bytes of the initializers an .onnx file declares (external data included: its size is
    in the dims), from the kept bytes when there are some."""
    import onnx  # a core dependency, imported only when measuring
    from google.protobuf.message import DecodeError
    from onnx import helper

    path = Path(path).resolve()
    try:
        stat = path.stat()
        key: tuple = (path, stat.st_size, stat.st_mtime_ns)
    except OSError:                  # gone from disk: loaded from the bytes kept in RAM
        key = (path, "kept")
    with _lock:
        known = _weights.get(key)
    if known is not None:
        return known
    total = 0
    try:
        graph = onnx.load_from_string(_blobs.read(blobs, path)).graph   # external data unread
        for init in graph.initializer:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
            total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    except (DecodeError, KeyError, ValueError):   # ORT loaded what this onnx cannot read
        total = 0                                 # (a newer opset or dtype): RSS alone counts
    with _lock:
        _weights[key] = total
    return total


_settled = False


def settle(ort) -> None:
    """Create one trivial session in this process, once, before the first measured load: ONNX
    Runtime's one-time setup (its environment, kernel registries) grows the RSS by ~9 MiB on
    the first session made (measured on x86-64, onnxruntime 1.2x), which would otherwise count
    in the first model's footprint. `ort` is the onnxruntime module, imported by the caller."""
    global _settled
    with _lock:
        if _settled:
            return
        _settled = True
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "settle", spec[:1], spec[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Measured:
    """A load's measurement: the RSS growth, taken as the load ends (cheap), and the weights'
    floor, parsed only when the footprint is asked for (under a budget)."""

    def __init__(self, rss_before: int, files, blobs: _blobs.Blobs | None = None):
        self.rss_growth = rss_bytes() - rss_before
        self._files, self._blobs = list(files), blobs

    def bytes(self) -> int:
        return max(self.rss_growth, sum(initializer_bytes(f, self._blobs) for f in self._files))


__all__ = ["Measured", "initializer_bytes", "rss_bytes", "settle"]
