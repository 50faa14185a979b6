"""The fake GPU's account of TensorRT objects' lifetimes (a mixin of gpu.FakeGpu).

The fake engines, contexts and runtimes (tensorrt_runtime.py, tensorrt_context.py) report
their creation and, from `__del__`, their destruction: the bindings free device memory there
(pyCore.cpp binds no explicit destroy; the last Python reference frees the C++ object). The
checks: a destructor runs with the retained primary context current; streams and events
TensorRT used are destroyed only after every TensorRT object (`_trt_alive`, from gpu.py).
"""
from __future__ import annotations

import threading


class Lifetimes:
    _lock: threading.RLock
    _contexts: list
    trt_live: dict
    trt_freed: list

    @property
    def contexts(self) -> list:
        """The execution contexts still alive, in creation order (destroyed ones drop out)."""
        return [c for c in (r() for r in self._contexts) if c is not None]

    # --- TensorRT objects' lifetimes: what their destructors free and in what order --------------
    @property
    def trt_device_bytes(self) -> int:
        """Device memory TensorRT objects hold: engines' weights, contexts' scratch."""
        with self._lock:
            return sum(nbytes for _, nbytes in self.trt_live.values())

    def trt_created(self, kind: str, key: int, name: str, nbytes: int = 0) -> None:
        with self._lock:
            self.trt_live[(kind, key)] = (name, int(nbytes))

    def trt_destroyed(self, kind: str, key: int, problems: list[str]) -> None:
        """A TensorRT object's destructor ran (its last reference went). It frees device
        memory: the primary context must be current and still retained; `problems`: the
        object's own ordering rules it broke."""
        with self._lock:
            name, _ = self.trt_live.pop((kind, key), ("?", 0))
            self.trt_freed.append((kind, name))
        self.record("trt.destroy", kind, name)
        self.need_context(f"destroying a TensorRT {kind} ({name})")
        for problem in problems:
            self.violate(problem)

    def _trt_alive(self, what: str) -> None:
        """`what` (a stream, an event, the primary context) goes last: no TensorRT object may
        outlive it (their destructors use it)."""
        with self._lock:
            left = sorted({f"{kind} {name}" for (kind, _), (name, _) in self.trt_live.items()})
        if left:
            self.violate(f"{what} while TensorRT objects still live: {', '.join(left[:4])}")
