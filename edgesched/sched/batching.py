"""SLO-aware dynamic batching: which waiting requests of one model run together, as data.

When a policy launches slice 0 of a request of a model with `batch:` configured, the requests
of the same model waiting beside it with the same input shapes but for dim 0 (`shape_key`)
may join it: their inputs run concatenated along dim 0 as one unit through every slice
(Clipper's adaptive batching, LazyBatching). Here, pure functions of hand-built values:
- `batch_size`: the largest prefix of the candidates (the launched request first, then the
  queue's order: urgency for realtime, arrival for best effort) whose predicted latency
  keeps every member's deadline. A member that would miss even alone does not stop the
  others from batching: under overload, batching is what lets the queue drain.
- `hold_until`: a short batch waits for company only where `wait_ms` is configured and the
  batch one more row would make still meets every deadline after the wait; else never.
- `BatchLatency`: predicted solo seconds of a whole model at a number of rows: the profile's
  per-batch-size measurements (calibrate) where present, else what this engine observed of
  its own batches, interpolated; past the largest size known it grows in proportion to the
  rows (pessimistic: a bigger grid never runs faster per row than the largest one measured).
  Without either for a model it predicts nothing, and the model runs unbatched until its
  lone requests have been observed.
"""
from __future__ import annotations

import bisect
from typing import Mapping, Sequence

from edgesched.shapes import ShapeError
from edgesched.types import ModelInfo

OBSERVED_WEIGHT = 0.2     # EWMA weight of each new observation of a (model, rows) latency


def max_rows(info: ModelInfo) -> int:
    """The most rows one batch of `info` may have: its `batch.max`, within every input's
    configured range for dim 0 (shapes.py). 0: the model does not batch."""
    if info.batch is None or info.batch.max_size < 2:
        return 0
    limit = info.batch.max_size
    for spec in info.inputs:
        if not spec.shape or spec.shape[0] is not None:
            return 0
        allowed = info.shapes.get(spec.name)
        if allowed is not None:
            limit = min(limit, allowed.max[0])
    return limit if limit >= 2 else 0


def check_batchable(info: ModelInfo) -> None:
    """ShapeError (one line) for a `batch:` the model cannot honour: an input whose first
    dimension is fixed, or a configured range that allows a single row only."""
    if info.batch is None or info.batch.max_size < 2:
        return
    for spec in info.inputs:
        if not spec.shape or spec.shape[0] is not None:
            raise ShapeError(f"model {info.name!r}: batch needs a dynamic first dimension in "
                             f"every input; input {spec.name!r} is declared "
                             f"{list(spec.shape)}")
        allowed = info.shapes.get(spec.name)
        if allowed is not None and allowed.max[0] < 2:
            raise ShapeError(f"model {info.name!r}: batch needs a range whose max allows 2 or "
                             f"more rows; input {spec.name!r} has {allowed}")
    for spec in info.outputs:
        if not spec.shape or spec.shape[0] is not None:
            raise ShapeError(f"model {info.name!r}: batch needs a dynamic first dimension in "
                             f"every output, to split a batch's outputs; output "
                             f"{spec.name!r} is declared {list(spec.shape)}")


def shape_key(inputs: Mapping) -> tuple | None:
    """(rows, what must match to batch together): dim 0 of the inputs and, per input, its
    dtype and the rest of its shape. None when the inputs disagree on dim 0 (not batchable).
    A synthetic request (no tensors: simulation, calibration) is (None, ())."""
    if not inputs:
        return None, ()
    rows = None
    rest = []
    for name in sorted(inputs):
        a = inputs[name]
        shape = tuple(a.shape)
        if not shape or (rows is not None and shape[0] != rows):
            return None
        rows = shape[0]
        rest.append((name, str(a.dtype), shape[1:]))
    return rows, tuple(rest)


def batch_size(deadlines_s: Sequence[float], rows: Sequence[int], latency_s, now_s: float,
               limit: int) -> int:
    """How many of the candidates (the launched one first) to run as one batch: the largest
    n whose rows fit `limit` and whose predicted finish (now + latency_s(rows of the n)) keeps
    every member's deadline, but for members that miss it even run alone now. latency_s:
    rows -> seconds, or None when unknown (then 1: nothing is batched on a guess)."""
    best, total = 1, rows[0]
    for n in range(2, len(rows) + 1):
        total += rows[n - 1]
        if total > limit:
            break
        predicted = latency_s(total)
        if predicted is None:
            break
        finish = now_s + predicted
        if all(finish <= d or _hopeless(d, r, latency_s, now_s)
               for d, r in zip(deadlines_s[:n], rows[:n])):
            best = n
    return best


def _hopeless(deadline_s: float, rows: int, latency_s, now_s: float) -> bool:
    alone = latency_s(rows)
    return alone is not None and now_s + alone > deadline_s


def hold_until(first_arrival_s: float, wait_s: float, deadlines_s: Sequence[float],
               rows: int, limit: int, latency_s, now_s: float) -> float | None:
    """Until when a batch of `rows` (short of `limit`) may wait for one more row, or None to
    launch now: only within `wait_s` of its first member's arrival, and only if a batch of
    rows + 1 launched then still meets every member's deadline."""
    if wait_s <= 0 or rows >= limit:
        return None
    until = first_arrival_s + wait_s
    if until <= now_s:
        return None
    predicted = latency_s(rows + 1)
    if predicted is None or any(until + predicted > d for d in deadlines_s):
        return None
    return until


class BatchLatency:
    """Predicted solo seconds of a whole model (all slices) by rows."""

    def __init__(self, measured: Mapping[str, Mapping[int, float]] | None = None):
        """measured: model -> rows -> solo seconds of all its slices (the profile's)."""
        self._measured = {m: dict(t) for m, t in (measured or {}).items() if t}
        self._observed: dict[str, dict[int, float]] = {}
        self._sizes: dict[str, list[int]] = {}     # sorted rows known, per model (a cache)

    def observe(self, model: str, rows: int, seconds: float) -> None:
        """A unit of `rows` of `model` ran through all slices in `seconds` of device time."""
        if model in self._measured or not seconds > 0:
            return                        # a measured profile is better than what co-runs show
        table = self._observed.setdefault(model, {})
        old = table.get(rows)
        table[rows] = seconds if old is None else old + OBSERVED_WEIGHT * (seconds - old)
        if old is None:
            self._sizes.pop(model, None)

    def seconds(self, model: str, rows: int) -> float | None:
        table = self._measured.get(model) or self._observed.get(model)
        if not table:
            return None
        sizes = self._sizes.get(model)
        if sizes is None:
            sizes = self._sizes[model] = sorted(table)
        if rows in table:
            return table[rows]
        i = bisect.bisect_left(sizes, rows)
        if i == len(sizes):                 # past the largest known: per row, as the largest
            top = sizes[-1]
            return table[top] * rows / top
        if i == 0:                          # below the smallest: no faster than it
            return table[sizes[0]]
        lo, hi = sizes[i - 1], sizes[i]
        return table[lo] + (table[hi] - table[lo]) * (rows - lo) / (hi - lo)

    def for_model(self, model: str):
        """rows -> seconds or None, for `batch_size` and `hold_until`."""
        return lambda rows: self.seconds(model, rows)
