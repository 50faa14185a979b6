"""`edgesched top`: a live view of a running server, in the spirit of jtop.

Every second it asks the server for STATS over its socket and shows per-model rate, p50/p99,
SLO attainment, queue, health and drift, each stream's occupancy over the last second, and
the board's GPU, EMC, temperatures and power. On a terminal it draws with curses (standard
library: nothing to install on a Jetson, works over ssh with any TERM) and quits on q; when
stdout is not a terminal it prints the same text block each refresh (`--count` to stop).
"""
from __future__ import annotations

import time
from typing import Callable

from edgesched.commands.table import format_table
from edgesched.errors import ServerUnavailable

BAR = 10          # characters in a stream's occupancy bar


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def _board(t: dict | None, source: str | None) -> str:
    if t is None:
        return "board: no telemetry" + (f" ({source})" if source else "")
    parts = []
    for label, load, freq in (("GPU", "gpu_load_pct", "gpu_freq_mhz"),
                              ("EMC", "emc_util_pct", "emc_freq_mhz")):
        bits = [f"{t[load]:.0f}%" if t.get(load) is not None else None,
                f"{t[freq]:.0f} MHz" if t.get(freq) is not None else None]
        if any(bits):
            parts.append(f"{label} " + " ".join(b for b in bits if b))
    if t.get("power_mw") is not None:
        parts.append(f"{t['power_mw'] / 1e3:.1f} W")
    parts += [f"{k} {c:.0f}C" for k, c in sorted((t.get("temps_c") or {}).items())]
    if t.get("nvpmodel"):
        parts.append(f"mode {t['nvpmodel']}")
    if t.get("jetson_clocks"):
        parts.append("jetson_clocks")
    return "board: " + ("  ".join(parts) or "-") + f"  ({source})"


def render(stats: dict, before: dict | None, dt_s: float, endpoint: str) -> list[str]:
    """The screen as lines: `before` is the previous STATS (None on the first), dt_s apart."""
    head = (f"edgesched top  {endpoint}  {stats['backend']}, policy {stats['policy']}, "
            f"{stats['streams']} streams, up {stats['uptime_s']:.0f} s")
    rows = []
    for name, m in stats["models"].items():
        was = before["models"].get(name) if before else None
        rate = (m["completed"] - was["completed"]) / dt_s if was and dt_s > 0 else None
        health = m.get("health") or {}
        drift = m.get("drift") or {}
        ratio = drift.get("ratio")
        rows.append([name, rate, m["p50_ms"], m["p99_ms"], _pct(m["slo_attainment"]),
                     m["queue_depth"], "ok" if health.get("healthy", True) else "UNHEALTHY",
                     None if ratio is None else
                     f"{ratio:.2f}x" + (" DRIFT" if drift.get("drifting") else ""),
                     m["rejected"] + m["expired"] + m["failed"]])
    lines = [head, _board(stats.get("telemetry"), stats.get("telemetry_source")), ""]
    lines += format_table(["model", "rate/s", "p50_ms", "p99_ms", "slo_met", "queue", "health",
                           "drift", "errors"], rows).splitlines()
    busy, was = stats.get("stream_busy_s", []), (before or {}).get("stream_busy_s")
    cells = []
    for i, seconds in enumerate(busy):
        share = (min(max((seconds - was[i]) / dt_s, 0.0), 1.0)
                 if was and i < len(was) and dt_s > 0 else None)
        filled = 0 if share is None else round(share * BAR)
        cells.append(f"{i} [{'#' * filled}{'.' * (BAR - filled)}] "
                     + ("  -" if share is None else f"{100 * share:3.0f}%"))
    lines += ["", "streams: " + "   ".join(cells)]
    for name, m in stats["models"].items():
        drift = m.get("drift") or {}
        if drift.get("drifting"):
            lines.append(f"drift: {name} at {drift['ratio']:.2f}x the profile"
                         + (f" ({drift['cause']})" if drift.get("cause") else "")
                         + ": recalibrate")
    return lines


class _Poller:
    def __init__(self, fetch: Callable[[], dict], endpoint: str):
        self._fetch, self._endpoint = fetch, endpoint
        self._before: tuple[dict, float] | None = None

    def lines(self) -> list[str]:
        try:
            stats = self._fetch()
        except ServerUnavailable as e:
            self._before = None
            return [f"edgesched top  {self._endpoint}", f"waiting for the server: {e}"]
        now = time.monotonic()
        before, then = self._before or (None, now)
        self._before = (stats, now)
        return render(stats, before, now - then, self._endpoint)


def run_plain(poller: _Poller, interval_s: float, count: int | None,
              write: Callable[[str], None]) -> int:
    shown = 0
    while count is None or shown < count:
        write("\n".join(poller.lines()) + "\n\n")
        shown += 1
        if count is None or shown < count:
            time.sleep(interval_s)
    return 0


def run_curses(poller: _Poller, interval_s: float, count: int | None) -> int:
    import curses

    def loop(screen) -> int:
        try:
            curses.curs_set(0)                      # some terminals cannot hide the cursor
        except curses.error:
            pass
        screen.timeout(int(interval_s * 1000))     # getch waits at most one refresh
        shown = 0
        while count is None or shown < count:
            height, width = screen.getmaxyx()
            screen.erase()
            for y, line in enumerate(poller.lines()[:height - 1]):
                screen.addnstr(y, 0, line, width - 1)
            screen.addnstr(height - 1, 0, "q: quit", width - 1, curses.A_DIM)
            screen.refresh()
            shown += 1
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline:     # a resize or other key: keep waiting
                key = screen.getch()
                if key in (ord("q"), ord("Q")):
                    return 0
        return 0
    try:
        return curses.wrapper(loop)
    except curses.error:
        return -1                                   # e.g. an unknown TERM: caller goes plain


def top(client, interval_s: float, count: int | None, tty: bool,
        write: Callable[[str], None]) -> int:
    poller = _Poller(client.stats, client.endpoint)
    if tty:
        status = run_curses(poller, interval_s, count)
        if status >= 0:
            return status
    return run_plain(poller, interval_s, count, write)
