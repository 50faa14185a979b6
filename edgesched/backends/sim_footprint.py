"""The simulated device's figure for a model's memory, for the memory budget: what TensorRT
would hold for it on a Jetson, estimated from the ONNX graphs in bytes, as
  weights (every initializer) + 2 x the largest activation tensor at the `opt` input shapes
(a layer's input and output are live at once; TensorRT reuses the rest of its activation
memory across layers). Cached per (path, shapes): the simulator's loads repeat."""
from __future__ import annotations

import threading
from pathlib import Path

import onnx

from edgesched.modelfiles.costmodel import tensor_bytes
from edgesched.modelfiles.manifest import Manifest
from edgesched.modelfiles.shaping import slice_shapes
from edgesched.shapes import ShapeRange

_known: dict[tuple, int] = {}
_lock = threading.Lock()


def model_bytes(path: Path, manifest: Manifest | None, opt: dict[str, tuple[int, ...]]) -> int:
    key = (Path(path).resolve(), tuple(sorted(opt.items())))
    with _lock:
        if key in _known:
            return _known[key]
    files = [manifest.slice_path(e) for e in manifest.slices] if manifest else [Path(path)]
    graphs = [onnx.load(str(f)) for f in files]
    fixed = {name: ShapeRange.fixed_at(shape) for name, shape in opt.items()}
    per_slice = slice_shapes(manifest, fixed, graphs) if manifest else [fixed]
    weights = largest = 0
    for graph, shapes in zip(graphs, per_slice):
        inits = {i.name for i in graph.graph.initializer}
        for name, nbytes in tensor_bytes(graph, shapes).items():
            if nbytes is None:
                continue
            if name in inits:
                weights += nbytes
            else:
                largest = max(largest, nbytes)
    total = weights + 2 * largest
    with _lock:
        _known[key] = total
    return total


__all__ = ["model_bytes"]
