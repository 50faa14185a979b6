"""systemd service notifications (sd_notify(3)) without libsystemd.

Under `Type=notify` systemd hands the service an AF_UNIX datagram socket in $NOTIFY_SOCKET and
waits for `READY=1` before it counts the service as started (and starts units ordered after
it). With `WatchdogSec=` it also sets $WATCHDOG_USEC and restarts the service when no
`WATCHDOG=1` arrives within that time. The protocol is one datagram of newline-separated
`KEY=value` assignments, so a dozen lines of socket code replace a C library dependency
(libsystemd / python-systemd are not pip-installable everywhere and JetPack images differ).

Everything here is best effort: the service must never fail because the notify socket is
missing, full or gone. Errors are logged once and otherwise ignored.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

log = logging.getLogger("edgesched.systemd")


class Notifier:
    """Sends service state to systemd. Without $NOTIFY_SOCKET every method is a no-op.

    Thread-safe: `watchdog()` is meant for the engine thread, the rest for the main thread.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`address`: the $NOTIFY_SOCKET value (a path, or `@name` for the abstract
        namespace), None for a no-op notifier. `watchdog_usec`: the $WATCHDOG_USEC value,
        None when the watchdog is off for this process. `clock`: monotonic seconds."""
        self._address = _socket_address(address) if address else None
        self._clock = clock
        # systemd restarts the service when a full WatchdogSec passes without a ping; pinging
        # at half of it leaves a whole half-interval of slack for one late or lost datagram.
        self.watchdog_interval_s = None if not watchdog_usec else watchdog_usec / 2e6
        self._last_ping_s: float | None = None
        self._ready_sent = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()     # guards socket creation/closing and the log-once flag
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *,
                 clock: Callable[[], float] = time.monotonic,
                 pid: int | None = None) -> "Notifier":
        """The notifier systemd asked for through the environment (sd_notify(3),
        sd_watchdog_enabled(3)); a no-op one when the process was not started by systemd."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # e.g. systemd 254+'s vsock: addresses (VMs); not needed on a Jetson.
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications off",
                        address)
            address = None
        return cls(address, _watchdog_usec(environ, os.getpid() if pid is None else pid),
                   clock=clock)

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (the process runs under Type=notify)."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self._address is not None and self.watchdog_interval_s is not None

    # --- the messages -------------------------------------------------------------------------
    def ready(self) -> None:
        """Start-up is complete: models loaded, socket bound. systemd arms the watchdog now."""
        self.notify("READY=1")
        self._ready_sent = True

    def stopping(self) -> None:
        """Shutdown has begun (systemctl shows `deactivating` while we drain)."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """A one-line status shown by `systemctl status`."""
        # A newline would start a new assignment: keep the text one line.
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        """Keep-alive ping; call it from the loop whose liveness it proves, as often as that
        loop turns. Sends at most once per half of WATCHDOG_USEC, and only after `ready()`:
        systemd arms the watchdog when start-up completes, so earlier pings prove nothing."""
        if self.watchdog_interval_s is None or self._address is None or not self._ready_sent:
            return
        now_s = self._clock()
        if self._last_ping_s is not None and now_s - self._last_ping_s < self.watchdog_interval_s:
            return
        # Counted as sent even if the send fails: the rate limit holds either way, and one lost
        # ping is covered by the half-interval of slack.
        self._last_ping_s = now_s
        # MSG_DONTWAIT: the engine loop must never block on a busy systemd; a ping that does not
        # fit into the socket's queue right now is dropped (and the next one is 1/2 interval away).
        self._send("WATCHDOG=1", socket.MSG_DONTWAIT)

    def notify(self, *assignments: str) -> None:
        """Send `KEY=value` assignments in one datagram (a no-op when not under systemd)."""
        if self._address is not None:
            self._send("\n".join(assignments), 0)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _send(self, message: str, flags: int) -> None:
        try:
            sock = self._socket()
            sock.sendto(message.encode(), flags, self._address)
        except OSError as e:
            # The socket vanished (systemd restarted, the test's socket closed), its queue is
            # full, or the path is too long: the service keeps running regardless.
            with self._lock:
                first, self._failed = not self._failed, True
            if first:
                log.warning("cannot notify systemd at %r (%s); further failures are not logged",
                            self._address, e)

    def _socket(self) -> socket.socket:
        # One unconnected datagram socket for every message, created on first use so that a
        # no-op notifier (or one never used) holds no file descriptor.
        with self._lock:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            return self._sock


def _socket_address(value: str) -> bytes:
    """$NOTIFY_SOCKET as a sendto() address: a leading `@` names the abstract namespace,
    which the kernel spells with a leading NUL byte."""
    raw = os.fsencode(value)
    return b"\0" + raw[1:] if raw.startswith(b"@") else raw


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC when the watchdog applies to process `pid`, else None
    (the rules of sd_watchdog_enabled(3))."""
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        # Set by systemd for the main process; a child that inherited the environment (a
        # worker, a subprocess) must not ping on its parent's behalf.
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a pid; watchdog pings off", pid_text)
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive integer; watchdog pings off", usec_text)
        return None
    return usec


__all__ = ["Notifier"]
