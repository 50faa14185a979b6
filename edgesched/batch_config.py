"""The `batch:` key of a model in config and workload files (config.py's checks, kept apart).

    batch: {max: 4}               requests waiting together run as batches of up to 4 rows
    batch: {max: 4, wait_ms: 5}   ... and a short batch may wait up to 5 ms for company

Off when absent. `max` counts rows of the inputs' first dimension, summed over the requests
merged (a client's own batch of 2 is 2 rows); 1 is the same as off. What is checked here is
the value only: whether the model can batch at all (a dynamic first dimension, a range that
allows the rows) is checked when it is loaded (sched/batching.check_batchable).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgesched.config_checks import _got, _Invalid, _Text
from edgesched.types import BatchConfig

MAX_SIZE = 256          # rows; more is a typo, not a batch a Jetson runs
MAX_WAIT_MS = 1000.0
EXPECTED = (f"{{max: N, wait_ms: W}}: max an integer from 1 to {MAX_SIZE}, wait_ms (optional) "
            f"milliseconds from 0 to {MAX_WAIT_MS:g}")


def check_batch(v: Any) -> BatchConfig | None:
    """A model's `batch:` value -> BatchConfig (None: null, off). _Invalid shows the entry
    at fault as written."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _Invalid(EXPECTED, v)
    unknown = [k for k in v if k not in ("max", "wait_ms")]
    if unknown:
        raise _Invalid(EXPECTED, _Text(f"unknown key {_got(unknown[0])}"))
    if "max" not in v:
        raise _Invalid(EXPECTED, _Text(f"{_got(dict(v))} without max"))
    size, wait = v["max"], v.get("wait_ms", 0.0)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise _Invalid(EXPECTED, _Text(f"max: {_got(size)}"))
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) \
            or not 0.0 <= wait <= MAX_WAIT_MS:
        raise _Invalid(EXPECTED, _Text(f"wait_ms: {_got(wait)}"))
    return BatchConfig(size, float(wait))
