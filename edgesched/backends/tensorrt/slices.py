"""One loaded engine: its I/O tensors, its execution contexts and their optimization profiles.

The rules this follows (NvInferRuntime.h, 8.6.1 and 10.x): each execution context used at the
same time as another on a dynamic-shape engine must use its own optimization profile; on 8.6
only the first context of an engine gets profile 0 by itself, later ones have none (-1) and
every enqueue on them fails until one is selected; 10.x gives every new context profile 0. So
context k selects profile k (set_optimization_profile_async on a stream, then that stream is
synchronized once, so no later launch on another stream races the switch) and keeps it. Each
context comes from `create_execution_context()`, which gives it its own scratch (activation)
memory, so contexts never share it. A static engine (fixed shapes set at build) needs no
profile: all its contexts run on the default one.

The tensorrt module is handed in (`Slice(trt, engine, ...)`), never imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgesched import dtypes
from edgesched.errors import ModelLoadError
from edgesched.types import TensorSpec


def _x(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


class Slice:
    """One engine and `instances` execution contexts, so that many requests of it run at once.
    `select_on` is the stream profile selections are queued on; `synchronize` waits for it."""

    def __init__(self, trt, engine, instances: int, path: Path, select_on: int,
                 synchronize: Callable[[int], None]):
        self.path = path
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}       # engine dims, -1 = dynamic
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            try:
                self.dtypes[name] = dtypes.from_tensorrt(engine.get_tensor_dtype(name)).np_dtype
            except dtypes.UnsupportedDtype as e:
                raise ModelLoadError(f"{path}: tensor {name!r}: {e}") from None
            self.shapes[name] = tuple(int(d) for d in engine.get_tensor_shape(name))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.dynamic = [n for n in self.inputs if -1 in self.shapes[n]]
        profiles = int(engine.num_optimization_profiles)
        if self.dynamic and instances > profiles:
            raise ModelLoadError(
                f"{path}: built with {profiles} optimization profile(s), but instances: "
                f"{instances} needs one per instance (contexts running at once must not share "
                f"one); rebuild it with `edgesched build ... --instances {instances}` or serve "
                f"it with instances: {profiles}")
        self.contexts = [engine.create_execution_context() for _ in range(instances)]
        if any(c is None for c in self.contexts):
            raise ModelLoadError(f"{path}: TensorRT cannot create {instances} execution "
                                 "context(s) (out of device memory?)")
        # per context (= per profile index): input name -> (min, opt, max) of its dynamic inputs
        self.limits: list[dict[str, tuple[tuple[int, ...], ...]]] = [{} for _ in self.contexts]
        if self.dynamic:
            for k, context in enumerate(self.contexts):
                try:
                    selected = context.set_optimization_profile_async(k, select_on)
                except RuntimeError:        # the bindings raise where the C++ returns false
                    selected = False
                if not selected:
                    raise ModelLoadError(f"{path}: TensorRT refused optimization profile {k} "
                                         f"for execution context {k}")
                self.limits[k] = {n: tuple(tuple(int(d) for d in dims) for dims in
                                           engine.get_tensor_profile_shape(n, k))
                                  for n in self.dynamic}
            synchronize(select_on)
        self.free = list(self.contexts)
        self.engine = engine
        self.serialized_bytes = 0        # the engine file's size (set by loading.py)

    def spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, self.dtypes[name].name,
                          tuple(None if d < 0 else d for d in self.shapes[name]))

    def refused(self, name: str, shape: Sequence[int]) -> str | None:
        """Why input `name` cannot have `shape` on this engine, whichever context runs it;
        None when every context's profile takes it."""
        dims = self.shapes[name]
        if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
            return (f"input {name!r}: shape {_x(shape)} does not match the engine's "
                    f"{'x'.join('?' if d < 0 else str(d) for d in dims)} ({self.path.name})")
        for limits in self.limits:
            if name in limits:
                low, _, high = limits[name]
                if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                    return (f"input {name!r}: shape {_x(shape)} is outside the range the "
                            f"engine was built for, {_x(low)} to {_x(high)} "
                            f"({self.path.name})")
        return None

    def opt_shape(self, name: str) -> tuple[int, ...]:
        """The shape a synthetic run gives input `name`: its profile's opt where dynamic."""
        if name in self.limits[0]:
            return self.limits[0][name][1]
        return tuple(max(d, 1) for d in self.shapes[name])
