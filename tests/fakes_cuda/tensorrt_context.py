"""The fake `tensorrt.IExecutionContext`, and the per-context rules it checks.

From NvInferRuntime.h (8.6.1, 10.x) and pyCore.cpp:
  - `set_optimization_profile_async(k, stream)` selects profile k (RuntimeError "Error in set
    optimization profile async." for a bad k: the binding raises where the C++ returns false);
    input shapes are set again after it; the switch is queued on `stream`, so a launch on
    another stream before that stream is synchronized races it (a violation);
  - on 8.6 a context created while another holds profile 0 has profile -1, and every enqueue
    on a dynamic-shape engine fails (returns False) until a profile is selected;
  - `set_input_shape` returns False for a shape outside the selected profile's [min, max] (or
    a static dim it contradicts, or with no profile selected);
  - two contexts of one dynamic-shape engine running at once on the same profile, or a context
    without its own scratch memory, are violations ("each execution context in concurrent use
    must use a separate optimization profile").
"""
from __future__ import annotations

import threading

import numpy as np

from tests.fakes_cuda.gpu import NON_BLOCKING, FakeGpu


def make_context_class(gpu: FakeGpu, major: int, TensorIOMode, nptype,   # noqa: N803
                       IProfiler=None):   # noqa: N803
    class IExecutionContext:
        def __init__(self, engine, context_id: int, profile: int, own_memory: bool):
            # The bindings' keep_alive<0, 1>: a context keeps its engine alive.
            self.engine, self.id, self.profile = engine, context_id, profile
            self.scratch = context_id if own_memory else None   # whose scratch it runs on
            gpu.trt_created("execution context", context_id, f"{engine.name}#{context_id}",
                            engine.device_memory_bytes if own_memory else 0)
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.busy: threading.Event | None = None   # completion of its last launch
            self.switched_on: int | None = None        # stream of a profile switch not waited
            self._profiler = None

        def __del__(self):
            """Its destructor frees its scratch memory: never while a launch of it runs."""
            try:
                problems = [f"execution context {self.id} destroyed while its launch runs"] \
                    if self.running() else []
                gpu.trt_destroyed("execution context", self.id, problems)
            except Exception:    # a destructor must not raise (unraisable-exception warnings)
                pass

        @property
        def profiler(self):
            return self._profiler

        @profiler.setter
        def profiler(self, value) -> None:
            # pyCore.cpp: the property takes an IProfiler (None clears it)
            if value is not None and not isinstance(value, IProfiler):
                raise TypeError("profiler: incompatible function arguments (an IProfiler)")
            if value is not None and not getattr(value, "_trt_initialized", False):
                raise TypeError("IProfiler.__init__() must be called when overriding __init__")
            self._profiler = value

        @property
        def active_optimization_profile(self) -> int:
            return self.profile

        def running(self) -> bool:
            return self.busy is not None and not self.busy.is_set() or any(
                self in s.unrecorded for s in gpu.streams.values())

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            if not isinstance(profile_index, int) or not isinstance(stream_handle, int):
                raise TypeError("set_optimization_profile_async(): incompatible function "
                                "arguments")
            gpu.record("set_optimization_profile_async", self.id, profile_index, stream_handle)
            gpu.need_context("set_optimization_profile_async")
            if gpu._live_stream(stream_handle, "set_optimization_profile_async") is None or \
                    not 0 <= profile_index < self.engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            if self.running():
                gpu.violate(f"execution context {self.id}: profile switched while it runs")
            gpu.streams[stream_handle].trt_used = True
            self.profile = profile_index
            self.shapes = {n: s for n, s in self.shapes.items() if n not in self.engine.dynamic}
            self.switched_on = stream_handle
            return True

        def set_device_memory(self, memory: int, size: int = 0) -> None:
            if major < 10:
                raise AttributeError("'IExecutionContext' object has no attribute "
                                     "'set_device_memory' (8.6: the device_memory property)")
            self.scratch = ("user", int(memory))

        def set_input_shape(self, name: str, shape) -> bool:
            gpu.record("set_input_shape", self.id, name, tuple(shape))
            mode, _, dims, _ = self.engine._io.get(name, (None, None, (), None))
            shape = tuple(int(d) for d in shape)
            if mode is not TensorIOMode.INPUT or len(shape) != len(dims) or any(
                    d != s and d >= 0 for d, s in zip(dims, shape)) or min(shape) < 1:
                return False
            if name in self.engine.dynamic:
                limits = self.engine.profile_limits(self.profile, name)
                if limits is None:                        # no profile selected (8.6: -1)
                    return False
                low, _, high = limits
                if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                    return False                          # outside the profile: refused
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            mode, _, dims, source = self.engine._io[name]
            if mode is TensorIOMode.INPUT:
                return self.shapes.get(name, dims)
            src = self.get_tensor_shape(source[0])
            return tuple(s if d < 0 else d for d, s in zip(dims, src))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if not isinstance(ptr, int):
                raise TypeError("set_tensor_address(): incompatible function arguments")
            gpu.record("set_tensor_address", self.id, name, ptr)
            if name not in self.engine._io:
                return False
            self.addresses[name] = ptr
            return True

        def _view(self, name: str) -> np.ndarray | None:
            _, dtype, _, _ = self.engine._io[name]
            shape = self.get_tensor_shape(name)
            np_dtype = np.dtype(nptype(dtype))
            nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            raw = gpu.device_view(self.addresses[name], nbytes, f"{self.engine.name}/{name}")
            return None if raw is None else raw.view(np_dtype).reshape(shape)

        def _concurrency_ok(self, stream_handle: int) -> bool:
            """Checks that do not fail the call but break TensorRT's rules."""
            if self.running():
                gpu.violate(f"execution context {self.id} launched while its last launch runs")
            if self.scratch is None:
                gpu.violate(f"execution context {self.id} has no scratch memory of its own")
            for other in self.engine.contexts:
                if other is self or not other.running():
                    continue
                if other.scratch == self.scratch:
                    gpu.violate(f"execution contexts {other.id} and {self.id} share scratch "
                                "memory and run at once")
                if self.engine.dynamic and other.profile == self.profile:
                    gpu.violate(f"{self.engine.name}: execution contexts {other.id} and "
                                f"{self.id} run at once on optimization profile {self.profile}")
            if self.switched_on is not None and self.switched_on != stream_handle:
                gpu.violate(f"execution context {self.id}: enqueued on {stream_handle:#x} before "
                            f"its profile switch on {self.switched_on:#x} was synchronized")
            self.switched_on = None
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(): incompatible function arguments")
            gpu.record("execute_async_v3", self.engine.name, self.id, stream_handle,
                       dict(self.addresses))
            gpu.need_context("execute_async_v3")
            stream = gpu._live_stream(stream_handle, "execute_async_v3")
            if stream is None:
                return False
            if not stream.flags & NON_BLOCKING:
                gpu.violate("execute_async_v3 on a blocking stream (syncs with the default one)")
            stream.trt_used = True
            if self.engine.dynamic and self.profile < 0:
                gpu.record("trt.error", f"context {self.id}: no optimization profile selected")
                return False                  # 8.6: enqueue fails until a profile is selected
            self._concurrency_ok(stream_handle)
            unset = [n for n in self.engine._names if n not in self.addresses]
            dynamic = [n for n in self.engine.dynamic if n not in self.shapes]
            if unset or dynamic:
                gpu.violate(f"{self.engine.name}: execute_async_v3 with no address for "
                            f"{unset} / no shape for dynamic inputs {dynamic}")
                return False
            views = {n: self._view(n) for n in self.engine._names}
            if any(v is None for v in views.values()):
                return False
            inputs = {n: views[n].copy() for n, (m, *_) in self.engine._io.items()
                      if m is TensorIOMode.INPUT}
            if gpu.fail_execute is not None and gpu.fail_execute(self.engine.name, inputs):
                return False
            for n, (mode, _, _, source) in self.engine._io.items():
                if mode is TensorIOMode.OUTPUT:
                    out = views[n]
                    out[...] = (inputs[source[0]] + source[1]).astype(out.dtype)
            factor = gpu.slowdown()
            stream.tail_us += factor * sum(us for _, us in self.engine.layers)
            if self._profiler is not None:   # enqueue emits the profile (the default): each
                for layer, us in self.engine.layers:    # layer once per execute, in ms
                    self._profiler.report_layer_time(layer, factor * us / 1e3)
            stream.unrecorded.append(self)
            return True

    return IExecutionContext
