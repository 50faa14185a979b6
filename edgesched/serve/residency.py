"""The memory budget (`limits.device_memory_mb`): which models are loaded on the backend.

Realtime models are pinned: loaded at start and never evicted (a config whose pinned models
alone exceed the budget is refused). Best-effort models load at start while they fit; each one
that does not is loaded once anyway, to learn its interface and footprint, and evicted at once.
A request to an evicted model waits here while it reloads: the least-recently-used resident
best-effort models with no request in flight are evicted to make room. The model files' bytes
stay in host RAM (backends/blobs.py), so a reload does not touch the disk. A waiting request
that the reload cannot serve within its deadline (or `WAIT_WITHOUT_DEADLINE_S` when it has
none) is answered ModelUnavailable: nothing is dropped silently.

Threads: `submit` runs where the server admits requests (under its intake lock, as engine
submissions do); evictions, the end of a load and every answer run on the engine thread
(`Engine.call_soon`, as serve/reload.py changes the model set); each reload runs on a thread
of its own beside the engine (one load at a time), and while requests wait a timer thread
re-checks every RETRY_S for room and for deadlines. A model is marked evicted under the intake
lock before it is unloaded, so no request reaches the engine for a model the backend no
longer holds. Without a budget `submit` is the engine's and nothing else here runs.

Stopping: `idle` (nothing waits here) and `abort_all` (answer what still waits) are for the
server's drain, beside the engine's own; serve/server.py's stop does not call them yet.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from edgesched.backends import Backend, ModelEntry, load_models
from edgesched.backends.blobs import Blobs
from edgesched.engine import Engine, Result, Submission
from edgesched.serve.residency_reloads import MIB, ReloadsMixin, mb as _mb
from edgesched.errors import ConfigError, ModelUnavailable
from edgesched.types import ModelInfo, Priority

log = logging.getLogger("edgesched.residency")
RETRY_S = 0.005                 # a waiting load re-checks for evictable models this often
WAIT_WITHOUT_DEADLINE_S = 30.0  # a request without a deadline waits this long for its model


@dataclass
class _Model:
    entry: ModelEntry
    pinned: bool
    footprint_bytes: int = 0        # measured at its last load
    resident: bool = False
    loading: bool = False           # room made (its footprint reserved), load under way
    last_used_s: float = 0.0
    loads: int = 0
    evictions: int = 0
    last_load_ms: float | None = None
    last_load_from: str | None = None     # "ram" | "disk"
    files: frozenset = frozenset()        # the model files its load kept in RAM (blobs.py)
    load_number: int = 0                  # of its key's loads, its last (loading())
    waiting: list[tuple[Submission, float]] = field(default_factory=list)  # (it, give up at)


class Residency(ReloadsMixin):
    _model_type = _Model         # what ReloadsMixin.adopt makes
    def __init__(self, backend: Backend, budget_mb: float | None, source: str = "config",
                 clock: Callable[[], float] = time.monotonic):
        self.backend, self.source, self._clock = backend, source, clock
        self.budget_bytes = None if budget_mb is None else int(budget_mb * MIB)
        # Model files are read once, then loaded from RAM; a backend without `blobs` (the
        # simulator) reads its files each time, and its reloads say so ("disk").
        self.blobs: Blobs | None = None
        if self.budget_bytes is not None and hasattr(backend, "blobs"):
            self.blobs = backend.blobs = Blobs()
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()           # _models' fields: several threads read them
        self._engine: Engine | None = None
        self._intake: threading.Lock | None = None
        self._on_result: Callable[[Result], None] | None = None
        self._load_lock = threading.Lock()      # one load at a time: see loading()
        self._prune_pending = False              # prune() found a load under way
        self._draining: dict[str, int] = {}      # removed models' bytes until drained (drop)
        self._loads_of: dict[str, int] = {}      # backend key -> loads of it so far
        self._timer_pending = False
        self._closed = False

    # --- start ------------------------------------------------------------------------------
    def load(self, entries: Iterable[ModelEntry]) -> dict[str, ModelInfo]:
        """Load the config's models within the budget (see the module's docstring); name ->
        ModelInfo for all of them. ConfigError (one line) when the pinned ones do not fit."""
        entries = list(entries)
        if self.budget_bytes is None:
            return load_models(self.backend, entries)
        infos: dict[str, ModelInfo] = {}
        order = sorted(entries, key=lambda m: m.priority is not Priority.REALTIME)
        try:
            for entry in order:
                m = _Model(entry, pinned=entry.priority is Priority.REALTIME)
                infos[entry.name] = self._load_now(m)
                self._models[entry.name] = m
                used = self._used_bytes()
                if m.pinned and used > self.budget_bytes:
                    pinned = [p for p in self._models.values() if p.pinned]
                    raise ConfigError(self.source, "limits.device_memory_mb",
                                      f"at least {_mb(used)} MiB: the realtime (pinned) models "
                                      + ", ".join(f"{p.entry.name} ({_mb(p.footprint_bytes)} "
                                                  "MiB)" for p in pinned) + " need that",
                                      self.budget_bytes / MIB)
                if used > self.budget_bytes:
                    self.backend.unload(entry.name)   # known now; reloaded on first request
                    m.resident, m.evictions = False, 1
                    log.info("model %r (%s MiB) does not fit the budget now: loads on its first "
                             "request", entry.name, _mb(m.footprint_bytes))
        except BaseException:
            for m in self._models.values():
                if m.resident:
                    self.backend.unload(m.entry.name)
            raise
        return infos

    def _load_now(self, m: _Model, resident: bool = True) -> ModelInfo:
        """Load `m` on this thread; resident at once, or (a reload) still `loading` until
        the engine thread has handed it its waiting requests."""
        with self.loading(m.entry.name) as number:
            m.load_number = number
            reads = None if self.blobs is None else self.blobs.disk_reads
            began = time.perf_counter()
            if self.blobs is None:
                info = load_models(self.backend, [m.entry])[m.entry.name]
            else:
                with self.blobs.recording() as files:
                    try:
                        info = load_models(self.backend, [m.entry])[m.entry.name]
                    except BaseException:
                        m.files |= files     # a failed load: keep what either load read
                        raise
                m.files = frozenset(files)   # before the lock's release, which may prune
            elapsed_ms = (time.perf_counter() - began) * 1e3
            footprint = int(self.backend.footprint_bytes(m.entry.name))
        with self._lock:
            m.last_load_ms, m.footprint_bytes = elapsed_ms, footprint
            m.last_load_from = "ram" if reads is not None and \
                self.blobs.disk_reads == reads else "disk"
            m.loads += 1
            if resident:
                m.resident, m.loading = True, False
            m.last_used_s = self._clock()
        return info

    def start(self, engine: Engine, on_result: Callable[[Result], None],
              intake: threading.Lock) -> None:
        """Serve through `engine`; `on_result` answers a request that could not wait (engine
        thread); `intake`: the lock the server admits requests under."""
        self._engine, self._on_result, self._intake = engine, on_result, intake

    @property
    def idle(self) -> bool:
        """No request waits here for its model to load."""
        with self._lock:
            return not any(m.waiting for m in self._models.values())

    def abort_all(self, error) -> None:
        """Answer every waiting request with `error` and stop the clock: the server stops
        (call it where the engine's abort_all is called, on the same thread)."""
        with self._lock:
            self._closed = True
            waiting = [s for m in self._models.values() for s, _ in m.waiting]
            for m in self._models.values():
                m.waiting = []
        for s in waiting:
            if s.model in self._engine.models:
                self._engine.stats.count(s.model, "failed")
            self._on_result(Result(s.model, s.reply_to, None, error, None))

    # --- intake (the server's admitting thread, under its intake lock) ----------------------
    def submit(self, submission: Submission, ring: bool = True) -> None:
        """ring: as Engine.submit (False from the engine's own thread between steps)."""
        m = self._models.get(submission.model)
        if m is None or not self._managed(submission.model):
            self._engine.submit(submission, ring)
            return
        now = self._clock()
        with self._lock:
            m.last_used_s = now
            if not m.resident:
                limit_s = submission.deadline_s if submission.deadline_s is not None else \
                    now + WAIT_WITHOUT_DEADLINE_S
                m.waiting.append((submission, limit_s))
            else:
                m = None
        if m is None:
            self._engine.submit(submission, ring)
        else:
            self._tick_later(0.0)

    def _managed(self, name: str) -> bool:
        """Still served under its own name (a reload may have removed it or moved it to a
        new version's backend key: such models stay as the reload left them)."""
        engine = self._engine
        return name in engine.models and engine._current.get(name, name) == name

    # --- a clock for the waiting requests --------------------------------------------------
    def _tick_later(self, delay_s: float) -> None:
        """One engine-thread `_tick` after `delay_s` (a timer thread that ends with it); one
        pending at a time. No thread runs while nobody waits."""
        if delay_s <= 0:
            self._engine.call_soon(self._tick)
            return
        with self._lock:
            if self._timer_pending or self._closed:
                return
            self._timer_pending = True

        def fire() -> None:
            with self._lock:
                self._timer_pending = False
            self._engine.call_soon(self._tick)
        timer = threading.Timer(delay_s, fire)
        timer.daemon = True
        timer.start()

    def _reload(self, m: _Model) -> None:
        """Load an evicted model again (its own thread); its requests follow."""
        try:
            self._load_now(m, resident=False)
        except Exception as e:      # EdgeschedError, or a library's own: its requests answered
            text = str(e).strip().splitlines()
            why = f"reloading it failed: {text[0] if text else type(e).__name__}"
            log.error("model %r: %s", m.entry.name, why)
            self._engine.call_soon(lambda: self._give_up(m, why))
            return
        log.info("model %r reloaded from %s in %.1f ms", m.entry.name, m.last_load_from,
                 m.last_load_ms)
        self._engine.call_soon(lambda: self._serve_waiting(m))

    # --- the engine thread ------------------------------------------------------------------
    def _tick(self) -> None:
        """Answer waiters whose time is up; make room for models that are waited for."""
        now = self._clock()
        for m in list(self._models.values()):
            with self._lock:
                late = [s for s, limit in m.waiting if limit <= now]
                m.waiting = [(s, limit) for s, limit in m.waiting if limit > now]
            for s in late:
                self._refuse(s, f"model {s.model!r} is not loaded (evicted under the memory "
                                "budget) and its reload did not finish within the request's "
                                "deadline")
            if m.waiting and not m.loading and m.entry.name not in self._engine.models:
                self._give_up(m, "a reload of the config removed it")
            elif m.waiting and not m.loading and not self._managed(m.entry.name):
                # A reload moved it to a new version (a backend key of its own, outside the
                # budget): the engine serves its requests now; its old key is the engine's to
                # unload, never ours to reload.
                with self._lock:
                    waiting, m.waiting = m.waiting, []
                for s, _ in waiting:
                    self._engine.submit(s)
            elif m.waiting and not m.resident and not m.loading:
                if m.footprint_bytes > self.budget_bytes - self._pinned_bytes(besides=m):
                    self._give_up(m, f"its {_mb(m.footprint_bytes)} MiB never fit beside the "
                                     f"pinned (realtime) models in limits.device_memory_mb: "
                                     f"{_mb(self.budget_bytes)} MiB")
                else:
                    self._make_room(m)
        with self._lock:
            waits = [limit for m in self._models.values() for _, limit in m.waiting]
        if waits:                          # again when room may have freed, or one expires
            self._tick_later(min(RETRY_S, min(waits) - now))

    def _make_room(self, m: _Model) -> None:
        free = self.budget_bytes - self._used_bytes()
        victims = []
        for v in sorted(self._models.values(), key=lambda v: v.last_used_s):
            if free >= m.footprint_bytes:
                break
            if v is m or v.pinned or not v.resident or v.loading or not self._idle(v):
                continue
            victims.append(v)
            free += v.footprint_bytes
        if free < m.footprint_bytes:
            return                               # retried in RETRY_S, while anyone waits
        with self._intake:
            # Under the intake lock: nothing of a victim gets submitted from now on (its new
            # requests wait here), so idle now is idle until it is unloaded below.
            victims = [v for v in victims if self._idle(v)]
            free = self.budget_bytes - self._used_bytes() + \
                sum(v.footprint_bytes for v in victims)
            if free < m.footprint_bytes:
                return
            with self._lock:
                for v in victims:
                    v.resident = False
                    v.evictions += 1
                m.loading = True
        for v in victims:
            self.backend.unload(v.entry.name)
            log.info("evicted model %r (%s MiB, least recently used) for %r", v.entry.name,
                     _mb(v.footprint_bytes), m.entry.name)
        threading.Thread(target=self._reload, args=(m,), name="edgesched-residency-load",
                         daemon=True).start()

    def _idle(self, m: _Model) -> bool:
        """No request of `m` queued, running, stuck, or holding backend buffers."""
        engine, name = self._engine, m.entry.name
        if not self._managed(name) or name in engine.retiring:
            return False
        if any(s.model == name for s in list(engine._inbox)):   # a C-level copy under the GIL
            return False
        if engine.state.pending(name) or name in set(engine._keys.values()):
            return False
        return not any(launch.model == name for launch in engine.state.stuck.values())

    def _serve_waiting(self, m: _Model) -> None:
        name = m.entry.name
        engine = self._engine
        if self._models.get(name) is not m or name not in engine.models:
            # A reload removed it meanwhile (and dropped this entry). The key this load
            # filled is unloaded unless a later load filled it again (a model added since
            # under the name) or it is the engine's to unload.
            if self._loads_of.get(name) == m.load_number and not self._managed(name) and \
                    name not in engine._retiring_keys:
                self.backend.unload(name)
            self._give_up(m, "a reload of the config removed it")
            return
        now = self._clock()
        with self._intake:               # the waiters first, then intake sees it resident
            with self._lock:
                waiting, m.waiting = m.waiting, []
                m.resident, m.loading = True, False
            for s, limit in waiting:
                if limit > now:
                    self._engine.submit(s)
        for s, limit in waiting:
            if limit <= now:
                self._refuse(s, f"model {s.model!r} was reloaded after the request's deadline")

    def _give_up(self, m: _Model, why: str) -> None:
        with self._lock:
            waiting, m.waiting = m.waiting, []
            m.loading = False
        for s, _ in waiting:
            self._refuse(s, f"model {s.model!r}: {why}")

    def _refuse(self, s: Submission, why: str) -> None:
        if s.model in self._engine.models:     # a model a reload removed has no statistics
            self._engine.stats.count(s.model, "failed")
        self._on_result(Result(s.model, s.reply_to, None, ModelUnavailable(why), None))

    # --- what STATS and MODELS show -----------------------------------------------------------
    def _pinned_bytes(self, besides: _Model | None = None) -> int:
        """The pinned models' footprints, `besides` left out."""
        with self._lock:
            return sum(m.footprint_bytes for m in self._models.values()
                       if m.pinned and m is not besides
                       and (self._engine is None or self._managed(m.entry.name)))

    def _used_bytes(self) -> int:
        with self._lock:
            if self._draining:            # removed by a reload, loaded until drained
                models = self._engine.models
                self._draining = {n: b for n, b in self._draining.items() if n in models}
            return sum(m.footprint_bytes for m in self._models.values()
                       if (m.resident or m.loading) and
                       (self._engine is None or self._managed(m.entry.name))) + \
                sum(self._draining.values())

    def of(self, name: str) -> dict | None:
        """One model's residency for MODELS and STATS; None without a budget."""
        m = self._models.get(name)
        if self.budget_bytes is None or m is None:
            return None
        with self._lock:
            return {"state": "resident" if m.resident else
                    ("loading" if m.loading else "evicted"),
                    "pinned": m.pinned, "footprint_mb": round(m.footprint_bytes / MIB, 3),
                    "loads": m.loads, "evictions": m.evictions,
                    "last_load_ms": None if m.last_load_ms is None else round(m.last_load_ms, 3),
                    "last_load_from": m.last_load_from, "waiting": len(m.waiting)}

    def snapshot(self) -> dict | None:
        """The budget as a whole (STATS); None without one."""
        if self.budget_bytes is None:
            return None
        return {"budget_mb": self.budget_bytes / MIB, "used_mb": round(self._used_bytes() / MIB, 3),
                "host_ram_mb": round(self.blobs.held_bytes / MIB, 3)}


def annotate_stats(server, stats: dict) -> None:
    """STATS: each model's residency and the budget's totals (the hook in serve/observe.py)."""
    residency = getattr(server, "residency", None)
    if residency is None or residency.budget_bytes is None:
        return
    for name, m in stats.get("models", {}).items():
        m["residency"] = residency.of(name)
    stats["memory_budget"] = residency.snapshot()


def model_fields(server, name: str) -> dict:
    """MODELS: {"residency": ...} for one model where a budget is set, else {} (the hook in
    serve/queries.py)."""
    residency = getattr(server, "residency", None)
    fields = None if residency is None else residency.of(name)
    return {} if fields is None else {"residency": fields}


__all__ = ["Residency", "annotate_stats", "model_fields"]
