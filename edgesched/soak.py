"""`edgesched bench soak`: a long mixed load on one server, watching it for leaks and lost work.

Load, from this process: `clients` threads, each with its own Client, send to every served model
(realtime and best effort) in pipelined batches, a few with deadlines too tight to meet; a
thread opens short-lived clients (connect, send, close: connection churn), some closing before
their reply comes; a thread queries STATS. Every request goes into a ledger and must be settled
exactly once, by a reply or a typed error; one that is never answered is counted, not ignored.
Each interval prints one row: answers, errors by type, p50/p99 latency seen by the clients, and
the server's RSS, open fds and threads read from /proc/<pid> (pid from its PING reply).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.errors import ConfigError, RequestError, ServerUnavailable
from edgesched.serve.client import Client
from edgesched.soak_server import ServerProcess, ping_pid, sample_process
from edgesched.table import cell

REPLY_TIMEOUT_S = 10.0       # no reply by then: lost (a healthy server answers in milliseconds)
PIPELINE_MAX = 4             # requests a client thread submits before it collects them
TIGHT_FRACTION = 0.05        # share of requests sent with a tight deadline
TIGHT_DEADLINES_MS = (0.01, 0.5, 2.0)  # 10 us always expires queued; 0.5-2 ms sometimes running
CHURN_PERIOD_S = 0.25        # a short-lived client every 250 ms: 4 connections/s opened and closed
ABANDON_EVERY = 5            # every 5th short-lived client closes without waiting for its reply
ABANDON_WAIT_S = 0.002       # ... after this long, so its request has left (LINGER is 0)
STATS_PERIOD_S = 1.0
COLUMNS = [("elapsed_s", 9), ("ok", 7), ("lost", 5), ("rss_mib", 8), ("fds", 5), ("threads", 7),
           ("p50_ms", 7), ("p99_ms", 7), ("errors", 0)]


@dataclass(frozen=True)
class Interval:
    elapsed_s: float
    ok: int                      # requests answered successfully in the interval
    errors: dict[str, int]       # typed error replies by class name (DeadlineExceeded, ...)
    lost: int                    # requests that got no reply within REPLY_TIMEOUT_S
    rss_mib: float | None        # the server's, at the interval's end; None: not readable
    fds: int | None
    threads: int | None
    p50_ms: float | None         # INFER latency seen by the clients, submit -> reply
    p99_ms: float | None


@dataclass(frozen=True)
class SoakResult:
    endpoint: str
    pid: int
    started_server: bool         # False: attached to a server that was already running
    duration_s: float
    interval_s: float
    clients: int
    models: list[str]
    intervals: list[Interval]
    sent: int                    # every request of the load, STATS and short-lived ones included
    ok: int
    errors: dict[str, int]
    lost: int                    # sent and never settled by a reply or typed error
    duplicates: int              # replies to a request already settled
    abandoned: int               # sent by short-lived clients that closed without waiting
    churn_clients: int
    undeliverable: int | None    # the server's count of replies it could not send
    crashes: list[str]           # load threads that died on an unexpected exception
    server_exit: int | None      # exit status of the server we started; None when attached

    @property
    def rss_growth_mib(self) -> float | None:
        first, last = self.intervals[0].rss_mib, self.intervals[-1].rss_mib
        return None if first is None or last is None else last - first

    @property
    def fd_delta(self) -> int | None:
        first, last = self.intervals[0].fds, self.intervals[-1].fds
        return None if first is None or last is None else last - first

    @property
    def clean(self) -> bool:
        return (not self.lost and not self.duplicates and not self.crashes
                and self.server_exit in (0, None))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rss_growth_mib": self.rss_growth_mib,
                "fd_delta": self.fd_delta, "clean": self.clean}


class _Ledger:
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


def _collect(pending, start_s: float, ledger: _Ledger) -> None:
    try:
        pending.result()
    except ServerUnavailable:
        ledger.settle(pending.id, "lost")
    except RequestError as e:
        ledger.settle(pending.id, type(e).__name__)
    else:
        ledger.settle(pending.id, "ok", time.perf_counter() - start_s)


class _Load:
    def __init__(self, endpoint: str, specs: list[dict], clients: int):
        self.endpoint, self.ledger, self.stop = endpoint, _Ledger(), threading.Event()
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
                    _collect(pending, start, self.ledger)

    def _churn(self, rng: np.random.Generator) -> None:
        while not self.stop.wait(CHURN_PERIOD_S):
            self.churned += 1
            with Client(self.endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
                pending, start = self._submit(client, rng)
                if self.churned % ABANDON_EVERY:
                    _collect(pending, start, self.ledger)
                else:
                    time.sleep(ABANDON_WAIT_S)
                    self.ledger.abandon(pending.id)

    def _stats(self, rng: np.random.Generator) -> None:
        with Client(self.endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
            for n in range(1_000_000_000):
                if self.stop.wait(STATS_PERIOD_S):
                    return
                key = ("STATS", n)       # a blocking call: its id stays inside the client
                self.ledger.send(key)
                try:
                    client.stats()
                except ServerUnavailable:
                    self.ledger.settle(key, "lost")
                except RequestError as e:
                    self.ledger.settle(key, type(e).__name__)
                else:
                    self.ledger.settle(key, "ok")


def format_row(values: list[object]) -> str:
    """One fixed-width row (rows print as they come, so widths cannot come from all of them)."""
    return "  ".join(cell(v).rjust(w) for v, (_, w) in zip(values, COLUMNS)).rstrip()


def _row(i: Interval) -> str:
    errors = " ".join(f"{k}:{v}" for k, v in sorted(i.errors.items())) or "-"
    return format_row([i.elapsed_s, i.ok, i.lost, i.rss_mib, i.fds, i.threads, i.p50_ms,
                       i.p99_ms, errors])


def _interval(elapsed_s: float, window: dict, pid: int, proc: Path) -> Interval:
    rss_mib, fds, threads = sample_process(pid, proc)
    latency_ms = np.asarray(window["latency_s"]) * 1e3
    p50, p99 = (np.percentile(latency_ms, [50, 99]).tolist() if latency_ms.size
                else (None, None))
    return Interval(round(elapsed_s, 1), window["ok"], dict(window["errors"]), window["lost"],
                    rss_mib, fds, threads, p50, p99)


def soak(config: Path | None = None, endpoint: str | None = None, duration_s: float = 600.0,
         interval_s: float = 60.0, clients: int = 4, out: Callable[[str], None] = print,
         proc: Path = Path("/proc")) -> SoakResult:
    """Attach to the server on `endpoint`, or start `edgesched serve --config` on a private
    socket (and stop it at the end); load it for `duration_s`, one row every `interval_s`."""
    if not (0 < interval_s <= duration_s):
        raise ConfigError("--interval-s", "interval", f"> 0 and at most the run's {duration_s:g} s",
                          interval_s)
    if clients < 1:
        raise ConfigError("--clients", "clients", "an integer >= 1", clients)
    server = None if endpoint else ServerProcess(config)
    try:
        endpoint = endpoint or server.endpoint
        pid = ping_pid(endpoint, REPLY_TIMEOUT_S)
        with Client(endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
            specs = client.models()
        load = _Load(endpoint, specs, clients)
        out(f"edgesched bench soak: {endpoint} (pid {pid}{', started here' if server else ''}), "
            f"models {', '.join(s['name'] for s in specs)}; {duration_s:g} s, {clients} "
            f"pipelined clients + short-lived clients + STATS")
        out(format_row([name for name, _ in COLUMNS]))
        intervals = []
        start = time.monotonic()
        load.start()
        try:
            for n in range(1, int(duration_s / interval_s + 1e-9) + 1):
                time.sleep(max(0.0, start + n * interval_s - time.monotonic()))
                intervals.append(_interval(time.monotonic() - start, load.ledger.take_window(),
                                           pid, proc))
                out(_row(intervals[-1]))
        finally:
            load.finish()
        undeliverable = None
        try:
            with Client(endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
                undeliverable = client.stats().get("undeliverable")
        except RequestError:
            pass                       # reported as None; the server's exit status tells more
        server_exit = server.stop() if server else None
    finally:
        if server:
            server.close()
    ledger = load.ledger
    result = SoakResult(endpoint, pid, server is not None, duration_s, interval_s, clients,
                        [s["name"] for s in specs], intervals, ledger.sent, ledger.ok,
                        dict(ledger.errors), ledger.lost + ledger.unsettled, ledger.duplicates,
                        ledger.abandoned, load.churned, undeliverable, list(load.crashes),
                        server_exit)
    out(summary(result))
    return result


def summary(r: SoakResult) -> str:
    first, last = r.intervals[0], r.intervals[-1]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "no errors"
    lines = [f"requests: {r.sent} sent, {r.ok} ok, {errors}; {r.lost} without a reply, "
             f"{r.duplicates} duplicate replies, {r.abandoned} abandoned by {r.churn_clients} "
             "short-lived clients (not awaited)",
             f"server: RSS {cell(first.rss_mib)} -> {cell(last.rss_mib)} MiB "
             f"({cell(r.rss_growth_mib)} first -> last interval), fds {cell(first.fds)} -> "
             f"{cell(last.fds)} ({cell(r.fd_delta)}), threads {cell(first.threads)} -> "
             f"{cell(last.threads)}, {cell(r.undeliverable)} replies undeliverable"
             + ("" if r.server_exit is None else f", exit status {r.server_exit}")]
    lines += [f"load thread crashed: {c}" for c in r.crashes]
    lines.append("result: clean" if r.clean else "result: PROBLEMS (see above)")
    return "\n".join(lines)
