"""Footprints for the memory budget on the CPU backends, and loading from kept bytes
(backends/blobs.py): ONNX Runtime counts at least a model's initializers and reloads without
its file; the simulator's figure is its weights plus twice its largest activation."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from edgesched.backends import ort_footprint
from edgesched.backends.blobs import Blobs
from edgesched.backends.sim import SimBackend
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.costmodel import tensor_bytes
from tests.models import EXAMPLES


def _weights(path) -> int:
    graph = onnx.load(str(path)).graph
    return sum(int(np.prod(i.dims)) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
               for i in graph.initializer)


def test_onnxruntime_counts_at_least_the_weights_and_reloads_from_ram(tmp_path):
    ort = pytest.importorskip("edgesched.backends.onnxruntime")
    path = shutil.copy(EXAMPLES / "attention.onnx", tmp_path / "a.onnx")
    backend = ort.OnnxRuntimeBackend(1)
    try:
        backend.blobs = Blobs()
        backend.load("a", path, 1)
        assert backend.footprint_bytes("a") >= _weights(path) == \
            ort_footprint.initializer_bytes(path) > 0
        backend.unload("a")
        (tmp_path / "a.onnx").unlink()                 # from RAM now, or not at all
        backend.load("a", path, 1)
        assert backend.blobs.disk_reads == 1 and backend.blobs.held_bytes == \
            (EXAMPLES / "attention.onnx").stat().st_size
        backend.unload("a")
        backend.blobs.forget([path])
        with pytest.raises(ModelLoadError, match="no such file"):
            backend.load("a", path, 1)
    finally:
        backend.close()


def test_the_simulator_figure_is_weights_plus_twice_the_largest_activation():
    backend = SimBackend("orin-nano", 1)
    path = EXAMPLES / "convnet.onnx"
    backend.load("c", path, 1)
    graph = onnx.load(str(path))
    names = {i.name for i in graph.graph.initializer}
    sizes = {n: b for n, b in tensor_bytes(graph).items() if b is not None}
    largest = max(b for n, b in sizes.items() if n not in names)
    assert backend.footprint_bytes("c") == _weights(path) + 2 * largest
    backend.load_work("w", [])
    assert backend.footprint_bytes("w") == 0            # no graph: nothing to count
    backend.close()
