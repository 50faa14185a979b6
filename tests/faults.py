"""A fault hook around a real backend (tests import it as `tests.faults`).

`FaultyBackend(inner, fault)` passes everything to `inner`, except that `fault(launch)` is
asked about every launch first:
  None     the launch runs normally on the inner backend;
  "raise"  the slice fails at once with an error, as a crashed kernel or a runtime exception;
  "hang"   the slice occupies its stream and does not end until `end_hangs()`, as a wedged
           kernel; then it really runs on the inner backend and ends late.
The engine cannot tell a hung launch from a slow one: that is what the launch timeout is for.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from edgesched.backends.base import Doorbell
from edgesched.types import Completion, Launch


class FaultyBackend:
    def __init__(self, inner, fault: Callable[[Launch], str | None]):
        self.inner, self.fault = inner, fault
        self.name, self.num_streams = inner.name, inner.num_streams
        self._failed: queue.SimpleQueue = queue.SimpleQueue()   # completions of "raise"
        self._hung: list[Launch] = []
        self._released: list[Launch] = []     # hung ones let go: launched in the next poll
        self._lock = threading.Lock()
        self.injected: list[tuple[str, Launch]] = []
        self._doorbell = Doorbell()

    # --- the hook -------------------------------------------------------------------------
    def launch(self, launch: Launch) -> None:
        what = self.fault(launch)
        if what is None:
            return self.inner.launch(launch)
        self.injected.append((what, launch))
        if what == "raise":
            now = time.monotonic()
            self._failed.put(Completion(launch, now, now, "RuntimeError: injected fault"))
            self._doorbell.ring()              # a poll waiting in the inner backend returns
        elif what == "hang":
            with self._lock:
                self._hung.append(launch)
        else:
            raise ValueError(f"unknown fault {what!r}")

    def end_hangs(self) -> int:
        """Let every hung launch run now (it ends late); returns how many there were. They
        go to the inner backend from the engine's thread, in its next poll (a backend's
        launch is the engine thread's call), which this wakes."""
        with self._lock:
            hung, self._hung = self._hung, []
            self._released.extend(hung)
        self._doorbell.ring()
        return len(hung)

    def poll(self, timeout_s: float) -> list[Completion]:
        with self._lock:
            released, self._released = self._released, []
        for launch in released:
            self.inner.launch(launch)
        failed = self._take_failed()
        done = self.inner.poll(0.0 if failed else timeout_s)
        return failed + done + self._take_failed()

    def _take_failed(self) -> list[Completion]:
        out = []
        while True:
            try:
                out.append(self._failed.get_nowait())
            except queue.Empty:
                return out

    # --- everything else goes straight through ----------------------------------------------
    def load(self, model, path, instances):
        return self.inner.load(model, path, instances)

    def unload(self, model):
        self.inner.unload(model)

    def stage(self, request_id, model, inputs):
        self.inner.stage(request_id, model, inputs)

    def fetch(self, request_id):
        return self.inner.fetch(request_id)

    def release(self, request_id):
        self.inner.release(request_id)

    def bind(self, doorbell):
        self._doorbell = doorbell
        self.inner.bind(doorbell)

    def close(self):
        self.inner.close()
