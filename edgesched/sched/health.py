"""Per-model health: a circuit breaker that keeps a failing model from taking device time.

A model turns *unhealthy* after `unhealthy_after` consecutive failed launches, or at once when
a launch hangs past the launch timeout (a wedged slice holds its stream; running the model
again would lose another). While unhealthy its requests are refused with `ModelUnavailable`,
except one probe request every `retry_s`, and none while one of its launches is still stuck.
The first success makes it healthy again. Deadline misses and overload are not model faults
and do not count. Written by the engine thread; `snapshot` may be read from any thread.

The breaker judges the model, not the client: it remembers per model the input shape
signatures that completed (`worked`, `proven`). A runtime rejection (the model's runtime raised
on the inputs, Completion.rejected) on a signature that never completed is the request's
fault: answered InvalidInput and counted in `rejections`, never toward `unhealthy_after`.
Device faults, timeouts, and rejections on proven signatures count as before.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _State:
    healthy: bool = True
    consecutive_failures: int = 0
    failures: int = 0                  # since start
    timeouts: int = 0                  # since start
    last_error: str | None = None
    next_probe_s: float = 0.0
    rejections: int = 0                # runtime rejections blamed on the inputs, since start
    # input shape signatures that completed, oldest first (a dict as an ordered set)
    proven: dict = field(default_factory=dict)


# Signatures remembered per model; past it the oldest is forgotten (a model with dynamic
# dimensions may see many shapes: memory stays bounded, a forgotten shape is proven again).
MAX_PROVEN = 1024


def signature(inputs) -> tuple:
    """A request's input shape signature: ((name, shape), ...) sorted by name."""
    if not inputs:
        return ()          # simulated requests carry no tensors: skip the sort, per request
    return tuple(sorted((name, tuple(getattr(a, "shape", ()))) for name, a in inputs.items()))


class Health:
    def __init__(self, models, unhealthy_after: int, retry_s: float):
        self._unhealthy_after = unhealthy_after
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._models = {name: _State() for name in models}

    def set_models(self, models) -> None:
        """Keep the entries of `models` (names), add new ones healthy, drop the rest."""
        with self._lock:
            self._models = {name: self._models.get(name) or _State() for name in models}

    def admit(self, model: str, now_s: float, stuck: bool) -> bool:
        """May a new request of `model` run? Always for a healthy model; for an unhealthy one,
        a probe at most every retry_s and never while a launch of it is stuck."""
        s = self._models[model]
        if s.healthy:
            return True
        if stuck or now_s < s.next_probe_s:
            return False
        with self._lock:
            s.next_probe_s = now_s + self._retry_s
        return True

    def succeeded(self, model: str) -> bool:
        """A request of `model` completed. True if that made it healthy again."""
        s = self._models[model]
        if s.healthy and not s.consecutive_failures:
            return False
        with self._lock:
            recovered = not s.healthy
            s.healthy, s.consecutive_failures = True, 0
        return recovered

    def completed(self, model: str, shapes: tuple | None) -> bool:
        """`worked(model, shapes)`, then `succeeded(model)`: once per completed request, so
        the common case (healthy, shapes proven) is one lookup and no lock."""
        s = self._models[model]
        if s.healthy and not s.consecutive_failures and (shapes is None or shapes in s.proven):
            return False
        self.worked(model, shapes)
        return self.succeeded(model)

    def worked(self, model: str, shapes: tuple | None) -> None:
        """A request of `model` with input signature `shapes` completed."""
        proven = self._models[model].proven
        if shapes is None or shapes in proven:
            return
        with self._lock:
            if len(proven) >= MAX_PROVEN:
                del proven[next(iter(proven))]
            proven[shapes] = None

    def blames_inputs(self, model: str, shapes: tuple | None) -> bool:
        """Is a runtime rejection of these inputs their own fault? Yes unless the model has
        completed a request of this very signature (then the model broke: it counts)."""
        return shapes is not None and shapes not in self._models[model].proven

    def rejected(self, model: str, error: str) -> None:
        """A runtime rejection blamed on the inputs: counted, the breaker left as it was."""
        s = self._models[model]
        with self._lock:
            s.rejections += 1
            s.last_error = error

    def failed(self, model: str, error: str, now_s: float, timed_out: bool = False) -> bool:
        """A launch of `model` failed (or hung). True if that made the model unhealthy."""
        s = self._models[model]
        with self._lock:
            s.consecutive_failures += 1
            s.failures += 1
            s.timeouts += timed_out
            s.last_error = error
            if not s.healthy:
                s.next_probe_s = now_s + self._retry_s     # the probe failed: wait again
                return False
            if timed_out or s.consecutive_failures >= self._unhealthy_after:
                s.healthy = False
                s.next_probe_s = now_s + self._retry_s
                return True
        return False

    def describe(self, model: str) -> str:
        s = self._models[model]
        return (f"model {model!r} is unhealthy after {s.consecutive_failures} failed launch(es)"
                f" (last: {s.last_error}); retried every {self._retry_s:g} s")

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {name: {"healthy": s.healthy, "consecutive_failures": s.consecutive_failures,
                           "failures": s.failures, "timeouts": s.timeouts,
                           "rejections": s.rejections, "last_error": s.last_error}
                    for name, s in self._models.items()}
