"""A minimal progress bar on stderr (a redrawn line on a terminal, plain lines otherwise)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24   # characters of bar


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._start = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        filled = WIDTH * self.done // max(self.total, 1)
        text = (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total}"
                f" {what} ({time.monotonic() - self._start:.1f} s)")
        end = "\n" if not self._tty or self.done == self.total else ""
        self.stream.write(("\r\033[K" if self._tty else "") + text + end)
        self.stream.flush()
