"""The intake byte budget: how many bytes of request tensors the server holds at once.

Counted: every admitted request's message (its zmq frames stay alive until its reply is
encoded: the backend stages the decoded arrays without a copy), from admission to the
engine's answer. Past `limits.intake_bytes`, a request is answered `Overloaded` at once and
its frames are dropped. What libzmq queues before the server reads it is bounded per
peer by the ROUTER's RCVHWM (messages), sized here from the budget, and MAXMSGSIZE (bytes per
frame). Request counts (`queue_depth`) still apply, per model, on top.
"""
from __future__ import annotations

import threading

# libzmq's default RCVHWM; we never go above it.
_ZMQ_DEFAULT_HWM = 1000


class IntakeBudget:
    """A thread-safe byte counter: `take` at admission, `give` with the answer (both
    on the serve thread; the metrics thread reads it)."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.peak_bytes = 0
        self.refused = 0                 # requests answered Overloaded for bytes, since start
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        """Hold `nbytes` more if they fit under the limit; False (nothing held) if not."""
        with self._lock:
            if self.held_bytes + nbytes > self.limit_bytes:
                self.refused += 1
                return False
            self.held_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.held_bytes -= nbytes

    def describe(self, nbytes: int) -> str:
        return (f"the server holds {self.held_bytes} bytes of requests; {nbytes} more would "
                f"pass limits.intake_bytes ({self.limit_bytes})")

    def snapshot(self) -> dict:
        with self._lock:
            return {"held_bytes": self.held_bytes, "peak_bytes": self.peak_bytes,
                    "limit_bytes": self.limit_bytes, "refused": self.refused}


def frame_cap_bytes(max_message_bytes: int, header_bytes: int) -> int:
    """ZMQ_MAXMSGSIZE (per frame): twice the message limit, so a request somewhat over it is
    still read and answered MessageTooLarge; a frame past this disconnects its peer."""
    return 2 * max_message_bytes + header_bytes


def receive_hwm(intake_bytes: int, max_message_bytes: int) -> int:
    """ZMQ_RCVHWM for the ROUTER, in messages per peer: a quarter of the budget in messages of
    the largest size, at least 2 (with 1, a CURVE client's first request stalled: measured on
    libzmq 4.3.5). libzmq holds at most this many whole messages per peer (plus
    the one it is decoding) before it stops reading that peer's socket: backpressure, no loss."""
    return max(2, min(_ZMQ_DEFAULT_HWM, intake_bytes // (4 * max_message_bytes)))


# glibc's M_MMAP_THRESHOLD parameter number (malloc.h), and ours: 1 MiB.
_M_MMAP_THRESHOLD, _MMAP_ABOVE_BYTES = -3, 1 << 20


def return_large_buffers() -> bool:
    """Make glibc serve every allocation of 1 MiB or more (request messages: libzmq's, numpy's)
    with its own mmap, unmapped when freed. By default glibc raises that threshold to the
    largest block freed (up to 32 MiB) and keeps freed 16 MiB messages in its per-thread
    arenas: under a flood the RSS then follows the allocator's high-water mark (+160 MiB over a
    96 MiB budget, measured) instead of the bytes held (+67 MiB). Costs page faults on each
    new large message. False where there is no glibc mallopt (musl, macOS): nothing changed."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE_BYTES))
