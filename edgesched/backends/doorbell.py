"""The engine's one wake-up, which the server's socket may share.

Any thread rings it (a submission, a reload's change, a stop); a thread-based backend's
workers ring it with their finished launches as the news. The engine thread waits on it
inside `Backend.poll`. A ring that comes before the wait is not lost: it ends the next wait at
once. A SimpleQueue, not a threading.Event: its put and get are C calls, where an Event takes
a Python-level Condition on both sides of every request.

`share` lets one thread own both the engine and a socket (the server's poll loop): from then on
a wait blocks in the sharer's poll, which also returns when the socket has input, and every
ring also writes one byte to a pipe that poll watches. A request then crosses no thread
between the socket and the engine, and a reply none on its way back.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable


class Doorbell:
    def __init__(self) -> None:
        self._news: queue.SimpleQueue = queue.SimpleQueue()
        self._block: Callable[[float], None] | None = None
        self._read_fd = self._write_fd = -1
        self._closing = threading.Lock()         # ring vs close of the shared pipe

    def share(self, block: Callable[[float], None]) -> int:
        """Wait in `block(timeout_s)` from now on, which must return early when the returned
        file descriptor is readable (every ring writes to it). Call before the waiting starts,
        from the thread that waits."""
        if self._block is None:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        self._block = block
        return self._read_fd

    def ring(self, news=None) -> None:
        self._news.put(news)
        if self._write_fd >= 0:                  # shared: ~1 us more per ring
            with self._closing:
                if self._write_fd >= 0:
                    try:
                        os.write(self._write_fd, b"\0")
                    except (BlockingIOError, OSError):
                        pass    # a full pipe is already readable

    def wait(self, timeout_s: float) -> list:
        """The news so far (rings without news dropped); if there is none yet, waits up to
        timeout_s seconds for the first ring (or, when shared, for the sharer's input)."""
        if self._block is not None:
            return self._wait_shared(timeout_s)
        try:
            first = self._news.get(timeout=timeout_s) if timeout_s > 0 else \
                self._news.get_nowait()
        except queue.Empty:
            return []
        return [item for item in [first, *self._take()] if item is not None]

    def _wait_shared(self, timeout_s: float) -> list:
        rings = self._take()
        if not rings and timeout_s > 0:       # a bare ring (None) also ends the wait
            self._block(timeout_s)
            try:
                while os.read(self._read_fd, 4096):   # drained: the next wait blocks again
                    pass
            except (BlockingIOError, OSError):
                pass
            rings = self._take()
        return [item for item in rings if item is not None]

    def _take(self) -> list:
        """Every ring queued so far, bare ones (None) included."""
        rings, get = [], self._news.get_nowait
        while True:
            try:
                rings.append(get())
            except queue.Empty:
                return rings

    def close(self) -> None:
        """Close the shared pipe (after the waiting thread has stopped; other threads may
        still ring: a timer, a finishing reload). Under the lock, so no ring writes to a
        descriptor number the process has since reused."""
        with self._closing:
            fds, self._read_fd, self._write_fd = (self._read_fd, self._write_fd), -1, -1
            self._block = None
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
