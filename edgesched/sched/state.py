"""Request state owned by the engine thread and read by policies.

Invariants: a request is either *waiting* (in the ready queue of its (model, next slice,
realtime or not)) or *running* exactly one slice; never both. A stream runs at most one slice at a
time, and one slice of a model runs at most `instances` launches at once.

Why queues per (model, next slice, priority): requests in one queue look the same to every
policy but for their order, so a plan need look only at each queue's first few (no more than
the slice's free instances or the free streams). A plan then costs per distinct ready slice,
not per queued request.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from edgesched.sched.arrivals import Gaps
from edgesched.types import Launch, ModelInfo, Priority


@dataclass(eq=False)
class Request:
    id: int
    model: str
    priority: Priority
    arrival_s: float                  # monotonic seconds when the server received it
    slo_s: float                      # latency objective, seconds after arrival
    num_slices: int
    deadline_s: float | None = None   # absolute monotonic seconds; None = no hard deadline
    reply_to: object = None           # opaque to the scheduler: where the owner sends the reply
    next_slice: int = 0
    first_launch_s: float | None = None
    device_s: float = 0.0             # sum of its completed slices' run times

    @property
    def order_key(self) -> tuple[float, int]:
        return (self.arrival_s, self.id)

    @property
    def slo_deadline_s(self) -> float:
        return self.arrival_s + self.slo_s

    @property
    def urgency_s(self) -> float:
        """The earlier of its objective and its client deadline (absolute seconds)."""
        d = self.arrival_s + self.slo_s
        return d if self.deadline_s is None or d < self.deadline_s else self.deadline_s


IDLE_QUEUES = 256      # emptied ready queues kept for reuse (each three empty lists)
# Read once: an Enum member read through its class costs ~0.06 us (CPython 3.11), and the
# queue key's realtime flag is read on every enqueue and dequeue.
_REALTIME = Priority.REALTIME

# (model, next slice, realtime): a bool, not the Priority enum, because an Enum hashes in
# Python code and these keys are hashed on every plan.
QueueKey = tuple[str, int, bool]


class ReadyQueue:
    """The waiting requests of one (model, next slice, realtime), in the orders policies use.
    Entries are (sort key, id, request): ids are unique, so requests are never compared."""

    __slots__ = ("by_arrival", "by_urgency", "by_deadline", "key", "model", "index", "realtime",
                 "slice_key")

    def __init__(self, key: QueueKey = ("", 0, False)) -> None:
        # The key's parts, kept apart so that a plan's loop over queues builds no tuples.
        self.key = key
        self.model, self.index, self.realtime = key
        self.slice_key = key[:2]            # (model, slice): the key of `slice_loads`
        self.by_arrival: list[tuple[float, int, Request]] = []
        self.by_urgency: list[tuple[float, int, Request]] = []    # Request.urgency_s
        self.by_deadline: list[tuple[float, int, Request]] = []   # client deadline only

    def __len__(self) -> int:
        return len(self.by_arrival)

    def add(self, r: Request) -> None:
        # Once per admission and per slice done: _insort's common case (an append) inline.
        rid = r.id
        arrival = r.arrival_s
        entry = (arrival, rid, r)
        entries = self.by_arrival
        if not entries or entries[-1] < entry:
            entries.append(entry)
        else:
            bisect.insort(entries, entry)
        urgency = arrival + r.slo_s                 # r.urgency_s, inline
        deadline = r.deadline_s
        if deadline is not None:
            if deadline < urgency:
                urgency = deadline
            _insort(self.by_deadline, (deadline, rid, r))
        entry = (urgency, rid, r)
        entries = self.by_urgency
        if not entries or entries[-1] < entry:
            entries.append(entry)
        else:
            bisect.insort(entries, entry)

    def discard(self, r: Request) -> bool:
        """Remove r if queued here; False if it was not."""
        entries = self.by_arrival
        if entries and entries[0][2] is r:           # a launch takes the head: the common case
            del entries[0]
        elif not _remove(entries, r.arrival_s, r):
            return False
        entries = self.by_urgency
        if entries and entries[0][2] is r:           # _remove's common case, inline
            del entries[0]
        else:
            _remove(entries, r.urgency_s, r)
        if r.deadline_s is not None:
            _remove(self.by_deadline, r.deadline_s, r)
        return True

    def oldest(self, n: int) -> list[Request]:
        return [e[2] for e in self.by_arrival[:n]]

    def most_urgent(self, n: int) -> list[Request]:
        return [e[2] for e in self.by_urgency[:n]]


def _insort(entries: list, entry: tuple) -> None:
    # Arrivals come mostly in order: appending is the common case, and O(1).
    if not entries or entries[-1] < entry:
        entries.append(entry)
    else:
        bisect.insort(entries, entry)


def _remove(entries: list, key: float, r: Request) -> bool:
    # A launch takes a queue's head: removing the first entry is the common case.
    if entries and entries[0][2] is r:
        del entries[0]
        return True
    i = bisect.bisect_left(entries, (key, r.id))
    if i < len(entries) and entries[i][2] is r:
        del entries[i]
        return True
    return False


@dataclass
class SchedState:
    """What a policy may look at: waiting requests, running launches, free streams."""

    models: dict[str, ModelInfo]
    num_streams: int
    # Streams that run at the device's highest priority (CUDA stream priority on TensorRT);
    # realtime work goes there first. Stream 0 by convention.
    high_priority_streams: frozenset[int] = frozenset({0})
    requests: dict[int, Request] = field(default_factory=dict)
    running: dict[int, Launch] = field(default_factory=dict)        # request id -> launch
    # Non-empty queues only, so that iterating them costs per distinct ready slice.
    _queues: dict[QueueKey, ReadyQueue] = field(default_factory=dict)
    _idle: dict[QueueKey, ReadyQueue] = field(default_factory=dict)   # emptied, for reuse
    _busy_streams: set[int] = field(default_factory=set)
    # stream -> a launch that overran the launch timeout and has not ended: its request was
    # answered and forgotten, but the stream (and the slice instance) stay busy until the
    # backend reports the launch ended, because a hung slice still holds them.
    stuck: dict[int, Launch] = field(default_factory=dict)
    _slice_load: dict[tuple[str, int], int] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)          # model -> admitted, unanswered
    # model -> its recent inter-arrival gaps (sched/arrivals.py): lets a policy expect the next
    # frame of a camera model (or a burst of several cameras') without being told its rate.
    gaps: dict[str, Gaps] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.models:
            self._pending.setdefault(name, 0)

    # --- queries (policies use these) -----------------------------------------------------
    def free_streams(self) -> list[int]:
        busy = self._busy_streams
        if not busy:
            return list(range(self.num_streams))
        return [s for s in range(self.num_streams) if s not in busy]

    def only_high_priority_usable(self) -> bool:
        """No stream outside the high-priority set can run anything (there is none, or each
        is held by a hung slice): then best-effort work may take a high-priority stream,
        rather than starve."""
        if not self.stuck and len(self.high_priority_streams) < self.num_streams:
            return False       # the common case, asked on every plan: no scan
        return all(s in self.high_priority_streams or s in self.stuck
                   for s in range(self.num_streams))

    def waiting(self) -> Iterator[Request]:
        """Every waiting request, model by model, each model's in arrival order. Costs per
        request: for failing or listing them, not for planning (see `ready`)."""
        for model in self.models:
            yield from self.waiting_for(model)

    def waiting_for(self, model: str) -> list[Request]:
        queues = [q.by_arrival for (m, _, _), q in self._queues.items() if m == model]
        return [e[2] for e in heapq.merge(*queues)] if len(queues) != 1 \
            else [e[2] for e in queues[0]]

    def ready(self) -> Iterator[tuple[QueueKey, ReadyQueue]]:
        """Each non-empty ready queue: ((model, next slice, realtime), its requests)."""
        return iter(self._queues.items())

    def ready_queues(self) -> Iterable[ReadyQueue]:
        """Each non-empty ready queue (its key in `.key`, `.model`, `.index`, `.realtime`)."""
        return self._queues.values()

    @property
    def has_ready(self) -> bool:
        """Some request is waiting (cheap: the engine asks on every step)."""
        return bool(self._queues)

    def launchable(self, model: str, index: int) -> int:
        """More launches this slice may start now (its instances less those running)."""
        return self.models[model].instances - self._slice_load.get((model, index), 0)

    @property
    def slice_loads(self) -> dict[tuple[str, int], int]:
        """(model, slice) -> launches running now; read-only for policies (the fast path)."""
        return self._slice_load

    def slice_load(self, model: str, index: int) -> int:
        """Launches of this slice running now (limited by the model's instances)."""
        return self._slice_load.get((model, index), 0)

    def pending(self, model: str) -> int:
        return self._pending[model]

    def __len__(self) -> int:
        return len(self.requests)

    # --- transitions (the engine calls these) ---------------------------------------------
    def set_models(self, models: dict[str, ModelInfo]) -> None:
        """A reload's model set (a new dict: policies cache per-model data by its identity).
        A model removed must have nothing pending."""
        self.models = models
        for name in [n for n in self._pending if n not in models]:
            del self._pending[name]
            self.gaps.pop(name, None)
        for name in models:
            self._pending.setdefault(name, 0)

    def admit(self, request: Request) -> int:
        """Queue a new request; returns its model's pending count with it (`pending`)."""
        model = request.model
        self.requests[request.id] = request
        pending = self._pending[model] = self._pending[model] + 1
        self._enqueue(request)
        gaps = self.gaps.get(model)
        if gaps is None:
            self.gaps[model] = Gaps(request.arrival_s)
        else:
            gaps.arrived(request.arrival_s)
        return pending

    def next_arrival_s(self, model: str, now_s: float | None = None) -> float | None:
        """The earliest plausible time of the model's next request, seen at now_s (default:
        its last arrival): sched/arrivals.py. None: no history yet, or the source stopped."""
        gaps = self.gaps.get(model)
        if gaps is None:
            return None
        return gaps.next_s(gaps.last_s if now_s is None else now_s)

    def start(self, launch: Launch, now_s: float) -> Request:
        # Once per launch: attributes read once, the checks kept.
        request = self.requests[launch.request_id]
        stream, index, rid = launch.stream, launch.slice_index, request.id
        busy, running = self._busy_streams, self.running
        if stream in busy:
            raise ValueError(f"stream {stream} is busy")
        if index != request.next_slice or rid in running:
            raise ValueError(f"request {rid} cannot start slice {index}")
        if not self._dequeue(request):
            raise ValueError(f"request {rid} is not waiting")
        running[rid] = launch
        busy.add(stream)
        key = (launch.model, index)
        loads = self._slice_load
        loads[key] = loads.get(key, 0) + 1
        if request.first_launch_s is None:
            request.first_launch_s = now_s
        return request

    def finish(self, launch: Launch, run_s: float) -> Request:
        """A launch ended: free its stream; the request advances (caller re-queues or retires)."""
        request = self.requests[launch.request_id]
        del self.running[request.id]
        self._busy_streams.discard(launch.stream)
        self._slice_load[(launch.model, launch.slice_index)] -= 1
        request.device_s += run_s
        request.next_slice += 1
        return request

    def abandon(self, request_id: int) -> Request:
        """A running launch overran its timeout: forget its request, keep its stream busy."""
        launch = self.running.pop(request_id)
        request = self.requests.pop(request_id)
        self._pending[request.model] -= 1
        self.stuck[launch.stream] = launch
        return request

    def unstick(self, launch: Launch) -> bool:
        """An abandoned launch ended after all: free its stream. False if it was not stuck."""
        if self.stuck.get(launch.stream) != launch:
            return False
        del self.stuck[launch.stream]
        self._busy_streams.discard(launch.stream)
        self._slice_load[(launch.model, launch.slice_index)] -= 1
        return True

    def requeue(self, request: Request) -> None:
        self._enqueue(request)

    def retire(self, request: Request) -> int:
        """Forget a request that is not running (answered, expired or failed); returns its
        model's pending count without it (`pending`)."""
        if request.id in self.running:
            raise ValueError(f"request {request.id} is still running")
        # One past its last slice it waits in no queue (only admission and a slice done with
        # more to go enqueue): the common retire, once per completed request, skips the look.
        if not 0 < request.num_slices <= request.next_slice:
            self._dequeue(request)
        del self.requests[request.id]
        pending = self._pending[request.model] = self._pending[request.model] - 1
        return pending

    def _enqueue(self, request: Request) -> None:
        key = (request.model, request.next_slice, request.priority is _REALTIME)
        queue = self._queues.get(key)
        if queue is None:
            # An emptied queue is kept aside and reused: most steps empty one and refill it.
            queue = self._idle.pop(key, None)
            if queue is None:
                queue = ReadyQueue(key)
            self._queues[key] = queue
        queue.add(request)

    def _dequeue(self, request: Request) -> bool:
        key = (request.model, request.next_slice, request.priority is _REALTIME)
        queue = self._queues.get(key)
        if queue is None or not queue.discard(request):
            return False
        if not queue.by_arrival:
            del self._queues[key]
            idle = self._idle
            if len(idle) < IDLE_QUEUES:
                idle[key] = queue
        return True
