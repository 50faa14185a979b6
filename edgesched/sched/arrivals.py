"""When a model's next request is likely to come: from the gaps between its recent arrivals.

A camera model's requests come periodically; several cameras into one model come in bursts
(four frames within a few ms, then a whole frame period of nothing). A smoothed mean gap
describes neither burst nor pause: with four cameras at 30 fps it says "every 8 ms", so a
best-effort slice is never allowed to run in the 25 ms pause after each burst. Instead the
recent gaps are grouped into windows (sorted, split where one gap is more than 1.5x the one
below it plus 1 ms: a burst's gaps are one window, the pause between bursts another; one
jittery camera's gaps stay one window). Having waited `w` since the last arrival, the next is
expected at the start of the first window that has not passed yet (MARGIN of its width early:
32 gaps rarely show a jitter's extremes), and is due at any moment while `w` lies inside it.
Past every window the request is overdue (due now); after twice the longest recent gap the
source counts as stopped (nothing is reserved for it). A policy that holds work back for an
expected request plans again when the estimate next changes (`changes_s`), even if nothing
else happens by then.
"""
from __future__ import annotations

import bisect
import collections

RECENT = 32          # gaps remembered per model: several bursts of up to 8 cameras
SPLIT_RATIO, SPLIT_S = 1.5, 1e-3     # a gap > 1.5x the one below + 1 ms starts a new window
MARGIN = 0.25        # a window is due this share of its width early (simulated mixes: 0.25
                     # keeps realtime p99 at solo on longlayer-nano, where 0 gave 1.13x)


class Gaps:
    """One model's recent inter-arrival gaps, in seconds (engine thread only)."""

    __slots__ = ("last_s", "_sorted", "_order", "_windows")

    def __init__(self, arrival_s: float):
        self.last_s = arrival_s
        self._sorted: list[float] = []
        self._order: collections.deque = collections.deque()
        self._windows: list[tuple[float, float]] | None = []

    def arrived(self, arrival_s: float) -> None:
        gap = arrival_s - self.last_s
        if gap < 0.0:                # out of order (a late admission): keep the latest
            return
        self.last_s = arrival_s
        if len(self._order) == RECENT:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(gap)
        bisect.insort(self._sorted, gap)
        self._windows = None         # regrouped when next asked (realtime models only)

    def windows(self) -> list[tuple[float, float]]:
        """(shortest, longest) gap of each group of similar recent gaps, shortest first."""
        if self._windows is None:
            windows, gaps = [], self._sorted
            lo = prev = gaps[0]
            for gap in gaps[1:]:
                if gap > SPLIT_RATIO * prev + SPLIT_S:
                    windows.append((lo, prev))
                    lo = gap
                prev = gap
            windows.append((lo, prev))
            self._windows = windows
        return self._windows

    def next_s(self, now_s: float) -> float | None:
        """The earliest plausible time of the next arrival, seen at now_s (>= now_s): the
        start of the next window not yet passed, now_s while due (inside a window, or past
        them all), None with no history yet or once the source has stopped."""
        # `_where`'s walk, inline: a policy asks this per realtime model on most plans.
        gaps = self._sorted
        if not gaps:
            return None
        last = self.last_s
        waited = now_s - last
        for lo, hi in self._windows if self._windows is not None else self.windows():
            early = lo - MARGIN * (hi - lo)
            if waited < early:
                return last + early
            if waited <= hi:
                return now_s
        return now_s if now_s < last + 2.0 * gaps[-1] else None

    def changes_s(self, now_s: float) -> float | None:
        """When `next_s` next changes if nothing arrives: the next window's start or the
        current one's end, or when the source will count as stopped."""
        where = self._where(now_s)
        return None if where is None else where[2]

    def _where(self, now_s: float) -> tuple[bool, float, float] | None:
        """(due now, when expected, when that changes) at now_s; None: no history, stopped."""
        if not self._sorted:
            return None
        last, waited = self.last_s, now_s - self.last_s
        for lo, hi in self.windows():
            early = lo - MARGIN * (hi - lo)
            if waited < early:
                return False, last + early, last + early
            if waited <= hi:
                return True, now_s, last + hi
        stops_s = last + 2.0 * self._sorted[-1]
        return (True, now_s, stops_s) if now_s < stops_s else None
