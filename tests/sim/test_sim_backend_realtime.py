"""The simulated GPU in real time (serving): doorbell rings, due completions, launch start times.

These assert only on what poll returns and in which order, never on how long it took.
"""
from __future__ import annotations

import threading
import time

from edgesched.backends.base import Doorbell
from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SliceWork
from tests.sim.sim_backend_helpers import make, start

# --- real time (serving on the simulated device) --------------------------------------------

GENEROUS_S = 5.0         # hang protection only


def poll_in_thread(backend: SimBackend, timeout_s: float) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(backend.poll(timeout_s)), daemon=True)
    thread.start()
    return thread, got


def bound(backend: SimBackend) -> Doorbell:
    """The doorbell an engine would bind the backend to."""
    doorbell = Doorbell()
    backend.bind(doorbell)
    return doorbell


def wake_until_done(doorbell: Doorbell, thread: threading.Thread, limit_s: float) -> None:
    end = time.monotonic() + limit_s
    while thread.is_alive() and time.monotonic() < end:
        doorbell.ring()
        thread.join(0.02)


def test_realtime_a_ring_ends_a_waiting_poll():
    backend = make(realtime=True)
    doorbell = bound(backend)
    thread, got = poll_in_thread(backend, 60.0)
    try:
        wake_until_done(doorbell, thread, GENEROUS_S)
        assert not thread.is_alive(), "a ring did not end the poll"
        assert got == [[]]
    finally:
        wake_until_done(doorbell, thread, 60.0)


def test_realtime_a_ring_just_before_poll_is_not_lost():
    """The engine checks its inbox, then polls; a submission (and its ring) landing between
    the two must still end the poll, or the request waits out the whole poll timeout."""
    backend = make(realtime=True)
    doorbell = bound(backend)
    doorbell.ring()
    thread, got = poll_in_thread(backend, 60.0)
    try:
        thread.join(GENEROUS_S)
        assert not thread.is_alive(), "a ring just before poll() was lost"
        assert got == [[]]
    finally:
        wake_until_done(doorbell, thread, 60.0)


def test_realtime_poll_returns_the_completion_when_due():
    backend = make(realtime=True)
    start(backend, 1, "compute", 1)                   # 1 ms
    got = []
    for _ in range(3):                                # one poll should do; hang protection
        got += backend.poll(GENEROUS_S)
        if got:
            break
    assert [c.launch.request_id for c in got] == [1]
    assert got[0].finished_s > got[0].started_s
    assert backend.now() >= got[0].finished_s


def wait_past(backend: SimBackend, seconds_: float) -> None:
    """Let the wall clock pass `seconds_` beyond the simulator's clock (no poll meanwhile)."""
    end = backend.now() + seconds_
    while time.monotonic() < end:
        time.sleep(seconds_ / 4)


def collect(backend: SimBackend, rids: set[int]) -> set[int]:
    got: set[int] = set()
    for _ in range(40):
        got |= {c.launch.request_id for c in backend.poll(0.05)}
        if got >= rids:
            break
    return got


def test_realtime_a_completion_due_before_the_poll_is_reported():
    """The engine may be busy when a slice ends: the next poll must still report it."""
    backend = make(realtime=True)
    start(backend, 1, "compute", 1)                   # 1 ms
    wait_past(backend, 0.02)
    assert collect(backend, {1}) == {1}


def test_realtime_a_launch_starts_when_it_is_made():
    """After an idle spell with no poll, a launch starts at the wall clock's now, not at the
    time of the last poll (which would shorten its simulated latency by the idle time)."""
    backend = make(realtime=True)
    wait_past(backend, 0.02)
    before = time.monotonic()
    start(backend, 1, "compute", 1)
    got = []
    for _ in range(40):
        got += backend.poll(0.05)
        if got:
            break
    assert [c.launch.request_id for c in got] == [1]
    assert got[0].started_s >= before


def test_realtime_two_completions_close_together_are_both_reported():
    backend = make(realtime=True)
    backend.load_work("later", [SliceWork(11.0, 90.0, 0.0, 0.1, 0.01, 1, 0.1, 0.0)])
    start(backend, 1, "tiny", 1)                      # 100 us
    start(backend, 2, "later", 2)                     # 101 us: due by the next poll
    assert collect(backend, {1, 2}) == {1, 2}
