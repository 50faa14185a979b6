"""`edgesched bench soak`: a long mixed load on one server, watching it for leaks and lost work.

The load (soak/load.py) runs in this process against a server on `--endpoint`, or one started
here as `edgesched serve` on a private socket (soak/server.py). Each interval prints one row:
answers, errors by type, p50/p99 latency seen by the clients, and the server's RSS, open fds and
threads read from /proc/<pid> (the pid from its PING reply). The end prints a summary.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgesched.commands.soak.load import REPLY_TIMEOUT_S, Load
from edgesched.commands.soak.server import ServerProcess, ping_pid, sample_process
from edgesched.commands.table import cell
from edgesched.errors import ConfigError, RequestError
from edgesched.serve.client import Client

PING_TIMEOUT_S = 3.0         # as `edgesched status`: no answer by then, nothing is serving
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
    duplicates: int              # settled twice: a load bug (Client gives each id one reply)
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
        pid = ping_pid(endpoint, PING_TIMEOUT_S)
        with Client(endpoint, timeout_s=REPLY_TIMEOUT_S) as client:
            specs = client.models()
        load = Load(endpoint, specs, clients)
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
    for line in summary(result).splitlines():
        out(line)
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
