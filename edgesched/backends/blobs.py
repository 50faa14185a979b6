"""Model files' bytes kept in host RAM, so that a model evicted under the memory budget
(serve/residency.py) reloads without touching the disk.

A backend reads every model file it loads (an .onnx, an .engine, each slice of a sliced
directory) through the `Blobs` it was handed (`backend.blobs`): `read(path)` gives the bytes
(TensorRT deserializes them), `source(path)` a path to the copy in RAM for a library that loads
fastest from a path (ONNX Runtime: measured with ResNet-50, 102 MB, on a 2-core x86 VM, a
session from a path in RAM took ~60 ms, from a Python bytes object ~85 ms: the bindings copy
the bytes). Without Blobs (no budget: nothing is ever evicted) a backend reads the disk and
keeps nothing.

Each file is kept in an anonymous in-memory file (memfd_create; RAM or swap, never the
disk), from its first read until `forget` / `keep_only`; where memfd_create is missing (not Linux), as a
bytes object, and `source` gives the bytes. A file rebuilt on disk since it was kept (another
size or mtime) is read again; a file gone from the disk is served from RAM.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from pathlib import Path
from typing import Iterator

from edgesched.errors import ModelLoadError


class Blobs:
    """path -> the file's bytes in RAM; `disk_reads` counts reads that went to the disk
    (a reload served from RAM leaves it unchanged). Safe to use from several threads."""

    def __init__(self) -> None:
        # -> (memfd or bytes, size, the file's (mtime_ns, size) when kept)
        self._kept: dict[Path, tuple[int | bytes, int, tuple]] = {}
        self._lock = threading.Lock()
        self.disk_reads = 0
        self._seen: set[Path] | None = None      # what `recording` is collecting, if anything
        weakref.finalize(self, _close, self._kept)   # the memfds go with the last reference

    def read(self, path: Path) -> bytes:
        held, size, _ = self._keep(path)
        return held if isinstance(held, bytes) else os.pread(held, size, 0)

    def source(self, path: Path) -> str | bytes:
        """What a path-loading library opens: the in-RAM file's path (or the bytes)."""
        held, _, _ = self._keep(path)
        return held if isinstance(held, bytes) else f"/proc/self/fd/{held}"

    @contextlib.contextmanager
    def recording(self) -> Iterator[set[Path]]:
        """Within the block, add each file read or sourced to the set it gives (callers hold
        their own load lock: one recording at a time)."""
        seen: set[Path] = set()
        with self._lock:
            self._seen = seen
        try:
            yield seen
        finally:
            with self._lock:
                self._seen = None

    def _keep(self, path: Path) -> tuple[int | bytes, int]:
        key = Path(path).resolve()
        stamp = _stamp(key)
        with self._lock:
            if self._seen is not None:
                self._seen.add(key)
            kept = self._kept.get(key)
            if kept is not None and stamp in (None, kept[2]):   # unchanged, or gone: RAM
                return kept
            stale = self._kept.pop(key, None)
        if stale is not None:
            _close({key: stale})
        blob = read_file(key)
        held: int | bytes = blob
        if hasattr(os, "memfd_create"):
            held = os.memfd_create(f"edgesched:{key.name}", os.MFD_CLOEXEC)
            _write_all(held, blob)
        with self._lock:
            self.disk_reads += 1
            if key in self._kept:               # another thread kept it meanwhile
                if isinstance(held, int):
                    os.close(held)
                return self._kept[key]
            self._kept[key] = (held, len(blob), stamp)
            return self._kept[key]

    def __contains__(self, path) -> bool:
        with self._lock:
            return Path(path).resolve() in self._kept

    def forget(self, paths) -> None:
        with self._lock:
            gone = {k: self._kept.pop(k) for k in map(lambda p: Path(p).resolve(), paths)
                    if k in self._kept}
        _close(gone)

    def keep_only(self, paths) -> None:
        """Forget every kept file but `paths` (resolved, as `recording` gives them)."""
        keep = set(paths)
        with self._lock:
            gone = {k: v for k, v in self._kept.items() if k not in keep}
            for k in gone:
                del self._kept[k]
        _close(gone)

    @property
    def held_bytes(self) -> int:
        """Host RAM the kept files take."""
        with self._lock:
            return sum(kept[1] for kept in self._kept.values())


def _write_all(fd: int, blob: bytes) -> None:
    view, done = memoryview(blob), 0
    while done < len(blob):          # a write may take less than asked
        done += os.write(fd, view[done:done + (1 << 30)])


def _stamp(path: Path) -> tuple | None:
    """(mtime_ns, size) of the file on disk; None when it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _close(kept: dict) -> None:
    for held, *_ in kept.values():
        if isinstance(held, int):
            os.close(held)
    kept.clear()


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None


def read(blobs: Blobs | None, path: Path) -> bytes:
    """`path`'s bytes, through `blobs` when the backend has one."""
    return read_file(path) if blobs is None else blobs.read(path)


__all__ = ["Blobs", "read", "read_file"]
