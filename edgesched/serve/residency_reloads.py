"""What a reload changes in the memory budget (serve/residency.py's Residency holds these):
models it adds come under the budget, the files kept in RAM that no eviction needs any more
are forgotten, and the load lock that loads, reloads and prunes share.

Models a reload adds are loaded and warmed by serve/reload.py beside the old set; `adopt`
then makes them resident budget models (their files recorded while they loaded), and
whatever no longer fits is evicted on the engine thread (`_shrink`). `refuses` says, before
the switch, why realtime models could not all be pinned. A prune sets a flag, then tries the
load lock: a load holding it prunes as it releases it, so a prune never waits for a load.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

from edgesched.backends import ModelEntry
from edgesched.types import Priority

log = logging.getLogger("edgesched.residency")
MIB = 1024 * 1024


def mb(nbytes: int) -> str:
    """MiB to one decimal, as messages show them."""
    return f"{nbytes / MIB:.1f}"


class ReloadsMixin:
    """For Residency: uses its _models, _lock, _load_lock, _loads_of, _prune_pending,
    _draining, blobs, backend, budget_bytes, _engine, _intake, _clock, _managed, _idle,
    _used_bytes and _model_type."""

    # --- models a reload adds (the reloader's thread) ---------------------------------------
    @contextlib.contextmanager
    def recorded(self) -> Iterator[set]:
        """The files a load in the block reads (empty without a budget)."""
        if self.blobs is None:
            yield set()
            return
        with self.blobs.recording() as files:
            yield files

    def refuses(self, added: Iterable[ModelEntry], retuned: Iterable[ModelEntry] = (),
                removed: Iterable[str] = ()) -> str | None:
        """Why the realtime models a reload adds (loaded) or retunes to realtime cannot be
        pinned beside the pinned ones it keeps, or None."""
        if self.budget_bytes is None:
            return None
        added = list(added)
        now_of = {e.name: e.priority is Priority.REALTIME for e in retuned}
        leaving = set(removed) | {e.name for e in added}     # (an old entry of an added name)
        with self._lock:
            kept = sum(m.footprint_bytes for name, m in self._models.items()
                       if name not in leaving and now_of.get(name, m.pinned)
                       and self._managed(name))
        pinned = [(e.name, int(self.backend.footprint_bytes(e.name))) for e in added
                  if e.priority is Priority.REALTIME]
        need = kept + sum(b for _, b in pinned)
        if need <= self.budget_bytes:
            return None
        return (f"limits.device_memory_mb is {mb(self.budget_bytes)} MiB: the realtime "
                f"(pinned) models would need {mb(need)} MiB"
                + "".join(f", {n} {mb(b)} MiB of it" for n, b in pinned))

    def drop(self, removed: Iterable[str], moved: Iterable[str]) -> None:
        """Forget the budget entries of models a reload removed or moved to a new version
        (engine thread, after its switch): what still waits for a removed one is answered,
        for a moved one its new version serves it."""
        for names, gone in ((removed, True), (moved, False)):
            for name in names:
                with self._lock:
                    m = self._models.pop(name, None)
                    waiting = [] if m is None else m.waiting
                    if m is not None:
                        m.waiting = []
                        if gone and (m.resident or m.loading):
                            self._draining[name] = m.footprint_bytes   # still loaded
                for s, _ in waiting:
                    if gone:
                        self._refuse(s, f"model {name!r}: a reload of the config removed it")
                    else:
                        self._engine.submit(s, ring=False)

    def adopt(self, added: Iterable[ModelEntry], files: dict[str, frozenset],
              retuned: Iterable[ModelEntry] = ()) -> None:
        """Models a reload added (loaded and served now) come under the budget, resident;
        a retuned model is pinned by its new priority. Whatever no longer fits is evicted
        (least recently used, idle, best effort) on the engine thread."""
        if self.budget_bytes is None:
            return
        now = self._clock()
        made = {e.name: self._model_type(
            e, pinned=e.priority is Priority.REALTIME, resident=True, loads=1, last_used_s=now,
            footprint_bytes=int(self.backend.footprint_bytes(e.name)),
            files=files.get(e.name, frozenset())) for e in added}
        with self._lock:
            # A name added back: its old entry went with the reload that removed it (drop,
            # before this reload's switch), and it drained before it could be added again.
            for name in made:
                self._draining.pop(name, None)
            self._models.update(made)
            for e in retuned:
                m = self._models.get(e.name)
                if m is not None and self._managed(e.name):
                    m.entry, m.pinned = e, e.priority is Priority.REALTIME
        if self._used_bytes() > self.budget_bytes:
            self._engine.call_soon(self._shrink)

    def _shrink(self) -> None:
        """Evict idle best-effort models, least recently used first, until the resident ones
        fit the budget (engine thread); busy ones go on a later pass, when one is needed."""
        over = self._used_bytes() - self.budget_bytes
        if over <= 0:
            return
        with self._intake:        # as in _make_room: idle now stays idle until unloaded
            victims = []
            for v in sorted(self._models.values(), key=lambda v: v.last_used_s):
                if over <= 0:
                    break
                if v.pinned or not v.resident or v.loading or not self._idle(v):
                    continue
                victims.append(v)
                over -= v.footprint_bytes
            with self._lock:
                for v in victims:
                    v.resident = False
                    v.evictions += 1
        for v in victims:
            self.backend.unload(v.entry.name)
            log.info("evicted model %r (%s MiB, least recently used): a reload's models did "
                     "not fit the budget beside it", v.entry.name, mb(v.footprint_bytes))
        if over > 0:
            log.warning("the resident models exceed limits.device_memory_mb by %s MiB until "
                        "busy ones are evicted", mb(over))

    @contextlib.contextmanager
    def loading(self, key: str) -> Iterator[int]:
        """Hold the backend's load lock to load `key` (one load at a time; reloads of the
        config take it too); gives the key's load number, counted from 1. A prune asked for
        meanwhile runs as the lock is released."""
        self._load_lock.acquire()
        try:
            self._loads_of[key] = self._loads_of.get(key, 0) + 1
            yield self._loads_of[key]
        finally:
            self._release_load_lock()

    def prune(self) -> None:
        """Forget the files kept in RAM that no eviction will need again: those of models a
        reload removed or moved to a new version, and whatever else was loaded (a reload's
        models are outside the budget). Call after a reload. Never waits for a load under
        way: that load prunes as it releases the load lock."""
        if self.blobs is None:
            return
        # The flag first, then the try: a holder releasing meanwhile sees the flag.
        self._prune_pending = True
        if self._load_lock.acquire(blocking=False):
            self._release_load_lock()

    def _release_load_lock(self) -> None:
        while True:
            try:
                if self._prune_pending:
                    self._prune_held()
            finally:
                self._load_lock.release()
            if not self._prune_pending or not self._load_lock.acquire(blocking=False):
                return      # (a holder that took it meanwhile prunes as it releases)

    def _prune_held(self) -> None:
        self._prune_pending = False
        if self._engine is None:
            return
        retiring = self._engine.retiring
        self.blobs.keep_only([f for m in list(self._models.values())
                              if self._managed(m.entry.name) and m.entry.name not in retiring
                              for f in m.files])
