"""Which ONNX Runtime launches run on the engine's own thread (backends/onnxruntime.py).

Handing a launch to a stream worker and back costs two thread wake-ups (~50 us each on a
2-core x86 VM), a large share of a small slice. So a launch that would run alone runs inside
the engine's next poll instead, when its (model, slice, input shapes) never took longer than
MAX_S on any earlier run, and its slice's graph has no data-dependent control flow. The
engine's launch timeout cannot interrupt such a run (nothing can, on the engine's thread):
new shapes, a slice that ever ran long, and graphs whose run time the inputs' values decide
(Loop, If, Scan, NonMaxSuppression, NonZero, Unique) always run on a worker, where a run that
hangs costs one stream, not the engine. MAX_S also bounds how long a request that arrives
meanwhile waits to be scheduled.
"""
from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

MAX_S = 0.001
_HISTORY = 4096        # (model, slice, shapes) kept; past it all are learnt anew
# Graphs with these nodes run as long as their inputs' values say (a Loop's trip count, the
# boxes NMS keeps), not as their shapes say.
DATA_DEPENDENT = ("Loop", "If", "Scan", "NonMaxSuppression", "NonZero", "Unique")
# A NodeProto's op_type field: tag 0x22, its length, its name (data_dependent).
_OP_TYPES = re.compile(b"\x22(?:" + b"|".join(re.escape(bytes([len(op)]) + op.encode())
                                               for op in DATA_DEPENDENT) + b")")


class InlineRuns:
    """The longest successful run of each (model, slice, input shapes), in seconds. Stream
    workers and the engine's thread both record: one dict store (atomic under the GIL)."""

    def __init__(self) -> None:
        self._longest: dict[tuple, float] = {}

    def allowed(self, key: tuple) -> bool:
        seconds = self._longest.get(key)
        return seconds is not None and seconds <= MAX_S

    def ran(self, key: tuple, seconds: float) -> None:
        longest = self._longest
        if len(longest) >= _HISTORY and key not in longest:
            longest.clear()          # dynamic shapes without end: bounded memory, not history
        before = longest.get(key)
        if before is None or seconds > before:
            longest[key] = seconds

    def forget(self, model: str) -> None:
        """An unloaded model's history goes: a model loaded later under its name is new."""
        self._longest = {k: v for k, v in self._longest.items() if k[0] != model}


def data_dependent(source: str | os.PathLike | bytes) -> bool:
    """Whether an ONNX file (a path, or its bytes) has a node of a DATA_DEPENDENT type. Read
    as protobuf bytes, not parsed: a node's op_type is field 4 of NodeProto (tag 0x22, then
    the length, then the name), found in one pass without loading the weights (~40 ms for
    100 MB). A chance match inside weight bytes only keeps a slice off the engine's thread,
    never puts one on it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _OP_TYPES.search(source) is not None
    with open(Path(source), "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _OP_TYPES.search(view) is not None

