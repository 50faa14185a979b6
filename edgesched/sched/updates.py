"""What the lifecycle's transitions return (sched/lifecycle.py): an `Update` per transition,
holding `Answer`s with their `Outcome` and what to do with their `Buffers`. Values only."""
from __future__ import annotations

import enum
from typing import Mapping, NamedTuple

from edgesched.errors import RequestError
from edgesched.sched.state import Request
from edgesched.types import Launch, Timings


class Outcome(str, enum.Enum):
    """How a request ended; the values are the statistics' counter names."""

    COMPLETED = "completed"
    FAILED = "failed"          # a backend fault, an unhealthy model, a hung launch
    EXPIRED = "expired"        # its deadline passed (or cannot be met)
    REJECTED = "rejected"      # refused at admission: its queue was full
    INVALID = "invalid"        # the backend refused its inputs: the client's mistake


class Buffers(enum.Enum):
    """What the engine does with the backend's copy of an answered request's tensors."""

    NONE = "none"              # never staged (refused at admission)
    FETCH = "fetch"            # completed: take the outputs
    RELEASE = "release"        # failed or expired: free them
    HELD = "held"              # a hung launch still uses them: freed when it ends


class Answer(NamedTuple):
    """An immutable value like a frozen dataclass, but a NamedTuple: one is made per request,
    and a frozen dataclass's per-field object.__setattr__ costs ~1 us more each."""

    request: Request
    outcome: Outcome
    buffers: Buffers
    error: RequestError | None = None
    timings: Timings | None = None     # set for COMPLETED only
    # A member of a batch (sched/batch_units.py), COMPLETED: its outputs are rows [first,
    # end) of the outputs of request `unit` (rows in all), whose buffers the engine fetches
    # once: (unit, first, end, rows). None: a request run alone, or a batch that failed.
    part: tuple[int, int, int, int] | None = None


class Update:
    """What to do after one transition. A plain class with slots, not a dataclass: up to three
    are made per engine step (none where nothing happened: see NOTHING)."""

    __slots__ = ("staged", "batches", "launches", "answers", "freed", "depths", "notices")

    def __init__(self) -> None:
        self.staged: list[tuple[Request, Mapping]] = []      # admitted: stage their inputs
        # A batch formed: (its head, the inputs it runs now, members whose own copies to free
        # once those are staged): release the head's copy, stage these, then free the members'.
        self.batches: list[tuple[Request, Mapping, tuple[int, ...]]] = []
        self.launches: list[Launch] = []
        self.answers: list[Answer] = []
        self.freed: list[int] = []           # request ids: a stuck launch ended
        # (model, requests pending) after each admission and answer, in order: the statistics'
        # queue depth and peak follow them.
        self.depths: list[tuple[str, int]] = []
        self.notices: list[tuple[str, str]] = []        # (level, message) to log

    def __repr__(self) -> str:
        return "Update(" + ", ".join(f"{name}={getattr(self, name)!r}"
                                     for name in self.__slots__) + ")"


def _nothing() -> Update:
    nothing = Update()
    for name in Update.__slots__:
        setattr(nothing, name, ())       # tuples: a shared update no one can add to
    return nothing


# The one update of every transition in which nothing happened (an engine step with no new
# submission, nothing due and no completion): shared, so such a step allocates none.
NOTHING = _nothing()
_new = object.__new__


def make_timings(queue_ms: float, device_ms: float, total_ms: float) -> Timings:
    """Timings(queue_ms, device_ms, total_ms) without the frozen dataclass's object.__setattr__
    per field (~0.2 us each; once per completed request): the same value. One update() from
    a dict, not item assignments: those leave an instance slow to read (types.make_launch)."""
    made = _new(Timings)
    made.__dict__.update({"queue_ms": queue_ms, "device_ms": device_ms, "total_ms": total_ms})
    return made
