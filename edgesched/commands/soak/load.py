"""The load of `edgesched bench soak` and its ledger.

`clients` threads, each with its own Client, send to every served model (realtime and best
effort) in pipelined batches, a few with deadlines too tight to meet; one thread opens
short-lived clients (connect, send, close: connection churn), some closing before their reply
comes; one queries STATS. Every request goes into the ledger and must be settled exactly once,
by a reply or a typed error; one never answered is counted as lost, never ignored.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Callable

import numpy as np

from edgesched.errors import RequestError, ServerUnavailable
from edgesched.serve.client import Client

REPLY_TIMEOUT_S = 10.0       # no reply by then: lost (a healthy server answers in milliseconds)
PIPELINE_MAX = 4             # requests a client thread submits before it collects them
TIGHT_FRACTION = 0.05        # share of requests sent with a tight deadline
TIGHT_DEADLINES_MS = (0.01, 0.5, 2.0)  # 10 us always expires queued; 0.5-2 ms sometimes running
CHURN_PERIOD_S = 0.25        # a short-lived client every 250 ms: 4 connections/s opened and closed
ABANDON_EVERY = 5            # every 5th short-lived client closes without waiting for its reply
ABANDON_WAIT_S = 0.002       # ... after this long, so its request has left (LINGER is 0)
STATS_PERIOD_S = 1.0


class Ledger:
    """Every request sent is settled exactly once: ok, a typed error, or lost. Keeps only the
    open requests, so a 10-minute run needs no memory per answered request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: set[object] = set()
        self.sent = self.ok = self.lost = self.duplicates = self.abandoned = 0
        self.errors: Counter[str] = Counter()
        self._window = self._new_window()

    @staticmethod
    def _new_window() -> dict:
        return {"ok": 0, "lost": 0, "errors": Counter(), "latency_s": []}

    def send(self, key: object) -> None:
        with self._lock:
            self._open.add(key)
            self.sent += 1

    def settle(self, key: object, outcome: str, latency_s: float | None = None) -> None:
        """outcome: "ok", "lost", or the error's class name."""
        with self._lock:
            if key not in self._open:
                self.duplicates += 1
                return
            self._open.remove(key)
            w = self._window
            if outcome == "ok":
                self.ok += 1
                w["ok"] += 1
                if latency_s is not None:
                    w["latency_s"].append(latency_s)
            elif outcome == "lost":
                self.lost += 1
                w["lost"] += 1
            else:
                self.errors[outcome] += 1
                w["errors"][outcome] += 1

    def abandon(self, key: object) -> None:
        with self._lock:
            self._open.discard(key)
            self.abandoned += 1

    def take_window(self) -> dict:
        with self._lock:
            window, self._window = self._window, self._new_window()
        return window

    @property
    def unsettled(self) -> int:
        with self._lock:
            return len(self._open)


def _inputs(spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs for a MODELS entry; a dynamic dimension (None, -1 or a name) becomes 1."""
    return {t["name"]: rng.random([d if isinstance(d, int) and d > 0 else 1
                                   for d in t["shape"]]).astype(t["dtype"])
            for t in spec["inputs"]}


def _settle(ledger: Ledger, key: object, wait: Callable[[], object],
            start_s: float | None = None) -> None:
    """Wait for one reply and put its outcome in the ledger (latency only for INFER)."""
    try:
        wait()
    except ServerUnavailable:
        ledger.settle(key, "lost")
    except RequestError as e:
        ledger.settle(key, type(e).__name__)
    else:
        ledger.settle(key, "ok", None if start_s is None else time.perf_counter() - start_s)


class Load:
    """The load threads (daemons: a hung server cannot keep the process alive) and their
    ledger."""

    def __init__(self, endpoint: str, specs: list[dict], clients: int):
        self.endpoint, self.ledger, self.stop = endpoint, Ledger(), threading.Event()
        rng = np.random.default_rng(0)
        self.work = [(s["name"], _inputs(s, rng)) for s in specs]
        self.churned, self.crashes = 0, []
        targets = [(self._pipelined, i) for i in range(clients)] + [(self._churn, clients),
                                                                    (self._stats, 0)]
        self.threads = [threading.Thread(target=self._guard, args=t, daemon=True,
                                         name=f"soak-{t[0].__name__}-{t[1]}") for t in targets]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        """Stop sending; every thread collects what it has in flight (at most the timeout)."""
        self.stop.set()
        for t in self.threads:
            t.join(REPLY_TIMEOUT_S + 5)

    def _guard(self, fn, seed: int) -> None:
        try:
            fn(np.random.default_rng(seed))
        except Exception as e:  # a bug in the load or an undocumented error type: report it
            self.crashes.append(f"{threading.current_thread().name}: {type(e).__name__}: {e}")

    def _submit(self, client: Client, rng: np.random.Generator):
        name, inputs = self.work[int(rng.integers(len(self.work)))]
        tight = rng.random() < TIGHT_FRACTION
        start = time.perf_counter()
        pending = client.submit(name, inputs, deadline_ms=float(rng.choice(TIGHT_DEADLINES_MS))
                                if tight else None)
        self.ledger.send(pending.id)
        return pending, start

    def _pipelined(self, rng: np.random.Generator) -> None:
        with Client(self.endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
            while not self.stop.is_set():
                batch = [self._submit(client, rng)
                         for _ in range(int(rng.integers(1, PIPELINE_MAX + 1)))]
                for pending, start in batch:
                    _settle(self.ledger, pending.id, pending.result, start)

    def _churn(self, rng: np.random.Generator) -> None:
        while not self.stop.wait(CHURN_PERIOD_S):
            self.churned += 1
            with Client(self.endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
                pending, start = self._submit(client, rng)
                if self.churned % ABANDON_EVERY:
                    _settle(self.ledger, pending.id, pending.result, start)
                else:
                    time.sleep(ABANDON_WAIT_S)
                    self.ledger.abandon(pending.id)

    def _stats(self, rng: np.random.Generator) -> None:
        with Client(self.endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
            for n in itertools.count():
                if self.stop.wait(STATS_PERIOD_S):
                    return
                key = ("STATS", n)       # a blocking call: its wire id stays inside the client
                self.ledger.send(key)
                _settle(self.ledger, key, client.stats)
