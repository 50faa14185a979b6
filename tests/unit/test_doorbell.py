"""The engine's doorbell alone, and shared with a poll loop (the server's single thread)."""
from __future__ import annotations

import select
import threading

from edgesched.backends.doorbell import Doorbell


def test_a_ring_before_the_wait_ends_it_at_once_and_bare_rings_carry_no_news():
    bell = Doorbell()
    bell.ring()
    bell.ring("done")
    assert bell.wait(10.0) == ["done"]
    assert bell.wait(0) == []


def _shared(bell: Doorbell, extra_fd: int | None = None) -> list:
    """Share `bell` with a select.poll over its pipe (and extra_fd): what each block saw."""
    seen: list = []
    poller = select.poll()

    def block(timeout_s: float) -> None:
        seen.append(poller.poll(timeout_s * 1e3))

    poller.register(bell.share(block), select.POLLIN)
    if extra_fd is not None:
        poller.register(extra_fd, select.POLLIN)
    return seen


def test_shared_a_ring_from_another_thread_ends_the_sharers_poll():
    bell = Doorbell()
    seen = _shared(bell)
    ringer = threading.Timer(0.05, bell.ring, args=("news",))
    ringer.start()
    assert bell.wait(30.0) == ["news"]       # returns on the ring, not after 30 s
    ringer.join()
    assert len(seen) == 1 and seen[0], seen   # it blocked once, and the pipe was readable
    bell.close()


def test_shared_the_sharers_own_input_ends_the_wait_with_no_news():
    import os
    bell = Doorbell()
    read_fd, write_fd = os.pipe()
    seen = _shared(bell, read_fd)
    os.write(write_fd, b"x")                  # "a request arrived on the socket"
    assert bell.wait(30.0) == []
    assert [fd for fd, _ in seen[0]] == [read_fd]
    os.close(read_fd), os.close(write_fd)
    bell.close()


def test_shared_rings_are_drained_so_the_next_wait_blocks_again():
    bell = Doorbell()
    seen = _shared(bell)
    for n in range(3):
        bell.ring(n)
    assert bell.wait(30.0) == [0, 1, 2]       # queued news: no block at all
    assert seen == []
    bell.ring()                               # a bare ring (a wake) also ends a wait
    assert bell.wait(30.0) == []
    # Those waits found news without blocking, so the pipe still holds their bytes: the next
    # block returns at once and drains it; the one after waits out its timeout.
    assert bell.wait(30.0) == [] and seen[-1]
    assert bell.wait(0.01) == [] and seen[-1] == []
    bell.close()


def test_after_close_a_ring_is_only_queued():
    bell = Doorbell()
    _shared(bell)
    bell.close()
    bell.ring("late")                          # no pipe to write to, no error
    assert bell.wait(0) == ["late"]
