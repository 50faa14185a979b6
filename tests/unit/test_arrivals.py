"""The next-arrival estimate from recent gaps (sched/arrivals.py), on hand-built histories."""
from __future__ import annotations

import pytest

from edgesched.sched.arrivals import MARGIN, RECENT, Gaps


def history(times: list[float]) -> Gaps:
    gaps = Gaps(times[0])
    for t in times[1:]:
        gaps.arrived(t)
    return gaps


def test_a_jittery_camera_is_due_from_its_shortest_gap_until_its_longest():
    times = [0.0]
    for k, jitter in enumerate([0.0, 0.003, -0.002, 0.001, -0.004, 0.002] * 3):
        times.append((k + 1) / 30 + jitter)
    cam = history(times)
    last = times[-1]
    shortest, longest = min(b - a for a, b in zip(times, times[1:])), \
        max(b - a for a, b in zip(times, times[1:]))
    assert cam.windows() == [(pytest.approx(shortest), pytest.approx(longest))]  # one window
    # due a quarter of the window's width early: 32 recent gaps rarely show its extremes
    early = last + shortest - MARGIN * (longest - shortest)
    assert cam.next_s(last + 0.001) == pytest.approx(early)
    assert cam.changes_s(last + 0.001) == pytest.approx(early)
    inside = last + (shortest + longest) / 2
    assert cam.next_s(inside) == inside                       # due at any moment
    assert cam.changes_s(inside) == pytest.approx(last + longest)


def test_after_a_burst_of_four_cameras_the_next_frame_is_a_whole_period_away():
    # four cameras at 30 fps, in phase, 1 ms apart within a burst
    times = sorted(k / 30 + c * 0.001 for k in range(8) for c in range(4))
    cams = history(times)
    last = times[-1]
    assert len(cams.windows()) == 2                           # the burst, the pause
    assert cams.next_s(last + 0.0002) == pytest.approx(last + 0.001)   # the burst goes on
    assert cams.next_s(last + 0.001) == pytest.approx(last + 0.001)    # due: inside it
    pause = 1 / 30 - 0.003
    assert cams.next_s(last + 0.002) == pytest.approx(last + pause)    # past the burst
    assert cams.changes_s(last + 0.002) == pytest.approx(last + pause)


def test_a_late_frame_is_overdue_and_a_silent_source_stops():
    cam = history([k * 0.1 for k in range(5)])
    assert cam.next_s(0.4 + 0.15) == pytest.approx(0.55)   # overdue: expected now
    assert cam.changes_s(0.55) == pytest.approx(0.4 + 0.2)
    assert cam.next_s(0.4 + 0.21) is None                   # stopped: nothing reserved


def test_no_history_no_estimate_and_only_recent_gaps_count():
    assert Gaps(1.0).next_s(1.5) is None and Gaps(1.0).changes_s(1.5) is None
    slow = [k * 1.0 for k in range(5)]                       # 1 s gaps ...
    fast = [4.0 + k * 0.01 for k in range(1, RECENT + 1)]   # ... then RECENT 10 ms ones
    cams = history(slow + fast)
    assert cams.windows() == [(pytest.approx(0.01), pytest.approx(0.01))]
    assert cams.next_s(fast[-1] + 0.005) == pytest.approx(fast[-1] + 0.01)
    assert cams.next_s(fast[-1] + 0.015) == pytest.approx(fast[-1] + 0.015)  # overdue
    assert cams.next_s(fast[-1] + 0.03) is None             # the 1 s gaps are forgotten


def test_an_out_of_order_arrival_is_ignored():
    cam = history([0.0, 0.1, 0.2])
    cam.arrived(0.15)
    assert cam.last_s == 0.2 and cam.next_s(0.21) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", range(5))
def test_next_s_is_the_window_walk_of_changes_s(seed):
    # next_s walks the windows inline; it must say what _where (behind changes_s) says.
    import random
    rng = random.Random(seed)
    t, gaps = 0.0, Gaps(0.0)
    for _ in range(RECENT + 8):
        t += rng.choice([0.001, 0.002, 0.030, 0.033]) + rng.uniform(0.0, 0.002)
        gaps.arrived(t)
        for waited in (0.0, 0.0005, 0.0015, 0.01, 0.029, 0.031, 0.034, 0.05, 0.07, 0.2):
            now = t + waited
            where = gaps._where(now)
            assert gaps.next_s(now) == (None if where is None else
                                        (now if where[0] else where[1]))
