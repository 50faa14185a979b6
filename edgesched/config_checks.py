"""The value checks of config files (config.py) and workload files (commands/workload.py):
each returns the typed value or raises _Invalid; the caller adds the file and key path.

A model's `batch:` key (check_batch):
    batch: {max: 4}               requests waiting together run as batches of up to 4 rows
    batch: {max: 4, wait_ms: 5}   ... and a short batch may wait up to 5 ms for company
Off when absent. `max` counts rows of the inputs' first dimension, summed over the requests
merged (a client's own batch of 2 is 2 rows); 1 is the same as off. Only the value is
checked here: whether the model can batch at all (a dynamic first dimension, a range that
allows the rows) is checked when it is loaded (sched/batching.check_batchable).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgesched.errors import ConfigError
from edgesched.modelfiles import versions
from edgesched.modelfiles.versions import MODEL_SUFFIXES  # noqa: F401 (config.MODEL_SUFFIXES)
from edgesched.shapes import ShapeError, ShapeRange, parse_mapping
from edgesched.types import BatchConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Bracketed IPv6, or a host name / IPv4 / interface / `*` without ':' or '/'.
_TCP = re.compile(r"(\[[^\]\s/]+\]|[^\s/:\[\]]+):([0-9]{1,5})")
# sun_path is 108 bytes with the NUL; zmq would fail only at bind time, less clearly.
_IPC_PATH_MAX_BYTES = 107


# --- value checks: each returns the typed value or raises _Invalid -------------------------

class _Invalid(Exception):
    """(expected, got) from a failed check; the caller adds the file and key path."""


class _Text:
    """A `got` shown as written (ConfigError repr()s what it is given)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_ABSENT = _Text("nothing")  # handed to a check when a required key is missing


def _got(value: object) -> object:
    if isinstance(value, _Text):
        return value
    text = repr(value)  # long values are cut so the message stays a readable line
    return _Text(text[:77] + "..." if len(text) > 80 else text)


def _integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    what = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def check(v: Any) -> int:
        # bool is an int subclass; `streams: yes` is a mistake, not 1.
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _Invalid(what, v)
        return v
    return check


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _Invalid("a finite number > 0", v)
    return float(v)


def _one_of(choices: Any) -> Callable[[Any], Any]:
    values = [c.value for c in choices] if isinstance(choices, type) else list(choices)

    def check(v: Any) -> Any:
        if not isinstance(v, str) or v not in values:
            raise _Invalid("one of " + ", ".join(values), v)
        return choices(v) if isinstance(choices, type) else v
    return check


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise _Invalid(f"a model name matching {_NAME.pattern}", v)
    return v


def _resolve(v: Any, base_dir: Path) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise _Invalid("a file path", v)
    return Path(os.path.abspath(base_dir / Path(v).expanduser()))


def _model_path(v: Any, base_dir: Path) -> Path:
    """A model file, a sliced directory, or the root of numbered versions (config.py picks
    the version: modelfiles/versions.py)."""
    path = _resolve(v, base_dir)
    if versions.is_model(path) or versions.is_versioned(path):
        return path
    why = ("a directory without manifest.json or numbered version directories" if path.is_dir()
           else "a file of another kind" if path.exists() else "which does not exist")
    where = f"{v!r}" if str(path) == v else f"{v!r} (resolved to {str(path)!r})"
    raise _Invalid("an existing .onnx, .engine or .plan file, a directory containing "
                   "manifest.json, or one of numbered versions (1/, 2/, ...)",
                   _Text(f"{where}, {why}"))


_SHAPES = "input name -> [sizes] or {min: [sizes], opt: [sizes], max: [sizes]}"


def _shapes(v: Any) -> dict[str, ShapeRange]:
    """A model's `shapes:` (config and workload files): input name -> [sizes] or a range.
    A bad entry is shown as written, with why (ShapeError's reason)."""
    if not isinstance(v, Mapping) or not v:
        raise _Invalid(_SHAPES, v)
    try:
        return parse_mapping(v)
    except ShapeError:
        pass
    for name, value in v.items():
        try:
            parse_mapping({name: value})
        except ShapeError as e:
            text = str(e)
            for prefix in (f"shapes.{name}: ", "shapes: "):
                text = text[len(prefix):] if text.startswith(prefix) else text
            head, cut, _ = text.rpartition(", got ")      # the value is shown already
            reason = head if cut else text
            raise _Invalid(_SHAPES, _Text(f"{_got(name)}: {_got(value)} ({reason})")) from None
    raise _Invalid(_SHAPES, v)        # not reached: some entry failed above


def _endpoint(v: Any) -> str:
    scheme, _, rest = v.partition("://") if isinstance(v, str) else ("", "", "")
    if scheme == "ipc" and rest:
        if len(rest.encode()) > _IPC_PATH_MAX_BYTES:
            raise _Invalid(f"an ipc path of at most {_IPC_PATH_MAX_BYTES} bytes "
                           "(the unix socket limit)", v)
        return v
    if scheme == "inproc" and rest:
        return v
    if scheme == "tcp":
        m = _TCP.fullmatch(rest)
        # No implicit all-interfaces: `*` or 0.0.0.0 must be written out.
        if not m or not 1 <= int(m.group(2)) <= 65535:
            raise _Invalid("tcp://<host>:<port> with a host (`*` or 0.0.0.0 for all interfaces) "
                           "and a port from 1 to 65535", v)
        return v
    raise _Invalid("ipc://<path>, tcp://<host>:<port> or inproc://<name>", v)


def validate_endpoint(endpoint: str, source: str, key: str) -> str:
    """`endpoint` unchanged if zmq can bind or connect to it, else ConfigError (also for CLI)."""
    try:
        return _endpoint(endpoint)
    except _Invalid as e:
        raise ConfigError(source, key, e.args[0], _got(e.args[1])) from None


# --- a model's batch: key -------------------------------------------------------------------
BATCH_MAX_SIZE = 256          # rows; more is a typo, not a batch a Jetson runs
BATCH_MAX_WAIT_MS = 1000.0
_BATCH_EXPECTED = (f"{{max: N, wait_ms: W}}: max an integer from 1 to {BATCH_MAX_SIZE}, "
                   f"wait_ms (optional) milliseconds from 0 to {BATCH_MAX_WAIT_MS:g}")


def check_batch(v: Any) -> BatchConfig | None:
    """A model's `batch:` value -> BatchConfig (None: null, off). _Invalid shows the entry
    at fault as written."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _Invalid(_BATCH_EXPECTED, v)
    unknown = [k for k in v if k not in ("max", "wait_ms")]
    if unknown:
        raise _Invalid(_BATCH_EXPECTED, _Text(f"unknown key {_got(unknown[0])}"))
    if "max" not in v:
        raise _Invalid(_BATCH_EXPECTED, _Text(f"{_got(dict(v))} without max"))
    size, wait = v["max"], v.get("wait_ms", 0.0)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= BATCH_MAX_SIZE:
        raise _Invalid(_BATCH_EXPECTED, _Text(f"max: {_got(size)}"))
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) \
            or not 0.0 <= wait <= BATCH_MAX_WAIT_MS:
        raise _Invalid(_BATCH_EXPECTED, _Text(f"wait_ms: {_got(wait)}"))
    return BatchConfig(size, float(wait))
