"""Measure latency per batch size through the Backend interface (calibrate, simulate).

For each model with a batch range (`batch:` configured and a dynamic dim 0: sched/batching
max_rows), at 1, 2, 4, ... rows up to its limit (and the limit itself): one request staged
with zero inputs of those rows (the rest of each shape at its opt), run slice after slice
alone on one stream, `runs` times; each slice's median solo time is kept. The profile stores
them (Profile.batch_us) and the batcher sizes batches by them. Zeros are what calibration
runs on anyway (onnxruntime.py's synthetic runs): timings of these CNNs do not depend on
the values.
"""
from __future__ import annotations

import statistics

import numpy as np

from edgesched.commands.measure_runner import CalibrationError, Runner
from edgesched.sched.batching import max_rows
from edgesched.types import Launch, ModelInfo


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... below `limit`, then `limit` (the sizes measured; others interpolated)."""
    sizes, rows = [], 1
    while rows < limit:
        sizes.append(rows)
        rows *= 2
    return sizes + [limit]


def inputs_at(info: ModelInfo, rows: int) -> dict[str, np.ndarray]:
    out = {}
    for spec in info.inputs:
        given = info.shapes.get(spec.name)
        opt = given.opt if given is not None else tuple(d or 1 for d in spec.shape)
        out[spec.name] = np.zeros((rows, *opt[1:]), spec.dtype)
    return out


def measure_batches(backend, models: dict[str, ModelInfo], runs: int = 5
                    ) -> dict[str, dict[int, tuple[float, ...]]]:
    """model -> rows -> median solo microseconds of each slice, for models that batch."""
    runner = Runner(backend)
    stream = runner.streams[0]
    out: dict[str, dict[int, tuple[float, ...]]] = {}
    for name, info in models.items():
        limit = max_rows(info)
        if not limit:
            continue
        table = {}
        for rows in batch_sizes(limit):
            inputs = inputs_at(info, rows)
            times: list[list[float]] = [[] for _ in range(info.num_slices)]
            for _ in range(runs):
                rid = next(runner._ids)
                backend.stage(rid, name, inputs)
                try:
                    for index in range(info.num_slices):
                        backend.launch(Launch(rid, name, index, stream))
                        done = []
                        while not done:
                            done = backend.poll(1.0)
                        times[index].append(runner._done(done[0]))
                except CalibrationError as e:
                    raise CalibrationError(f"{e} (at a batch of {rows} rows)") from None
                finally:
                    backend.release(rid)
            table[rows] = tuple(statistics.median(t) * 1e6 for t in times)
        out[name] = table
    return out
