"""What a model loaded on the TensorRT backend holds in device memory (on a Jetson: the DRAM
the CPU shares), for the memory budget (serve/residency.py). Counted once, at load, in bytes:

  - weights: each engine's serialized size. A plan is its weights plus kernels and metadata,
    and deserializing copies all of it to the device, so this is close to (slightly above)
    what the engine holds; an engine two models share is counted in each;
  - scratch: every execution context's activation memory, allocated at its creation with the
    default (STATIC) strategy: `device_memory_size_v2` (10.1+; `device_memory_size` on 8.6
    and 10.0), the largest over all profiles. Where a context keeps one profile for life and
    the engine reports per profile (`get_device_memory_size_for_profile_v2`, 10.1+), that
    profile's size is what it needs; STATIC allocates the largest, so that is what is counted;
  - I/O: each tensor the model's slices read or write, at its largest shape (its profile's
    max), once per instance (a request holds its tensors from staging to fetch, and the
    instances bound how many run at once); the model's inputs and outputs twice on a discrete
    GPU (device memory plus the pinned staging copy), once when zero-copy. Request buffers
    are pooled and allocated on first use (memory.py): this is the most they take.
The tensorrt module is never imported here: what is read comes from the loaded objects.
"""
from __future__ import annotations

import numpy as np

from edgesched.backends.tensorrt.slices import Slice
from edgesched.backends.tensorrt.state import Model


def scratch_bytes(engine) -> int:
    """One execution context's activation memory under the STATIC allocation strategy."""
    for name in ("device_memory_size_v2", "device_memory_size"):
        size = getattr(engine, name, None)
        if size is not None:
            return int(size)
    return 0


def _largest_shapes(piece: Slice) -> dict[str, tuple[int, ...]]:
    """Every I/O tensor of the slice at its largest shape. A dynamic output's size is known
    only once a context has input shapes; it is estimated without touching one: each -1 dim
    as the largest max any dynamic input has at that position (the batch dim, typically)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in piece.inputs:
        dims = piece.shapes[name]
        if name in piece.limits[0]:
            dims = max((limits[name][2] for limits in piece.limits),
                       key=lambda d: int(np.prod(d, dtype=np.int64)))
        shapes[name] = tuple(max(int(d), 1) for d in dims)
    widest: dict[int, int] = {}
    for name in piece.dynamic:
        for i, d in enumerate(shapes[name]):
            widest[i] = max(widest.get(i, 1), d)
    for name in piece.outputs:
        shapes[name] = tuple(widest.get(i, 1) if d < 0 else int(d)
                             for i, d in enumerate(piece.shapes[name]))
    return shapes


def model_bytes(model: Model, zero_copy: bool) -> dict[str, int]:
    """{"weights", "scratch", "io"} bytes of a loaded model (see the module's docstring)."""
    weights = scratch = 0
    io: dict[str, int] = {}
    instances = max((len(piece.contexts) for piece in model.slices), default=1)
    for piece in model.slices:
        weights += piece.serialized_bytes
        scratch += scratch_bytes(piece.engine) * len(piece.contexts)
        for name, shape in _largest_shapes(piece).items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * piece.dtypes[name].itemsize
            io[name] = max(io.get(name, 0), nbytes)
    staged = sum(n for name, n in io.items() if name in model.host_visible)
    io_bytes = instances * (sum(io.values()) + (0 if zero_copy else staged))
    return {"weights": weights, "scratch": scratch, "io": io_bytes}


__all__ = ["model_bytes", "scratch_bytes"]
