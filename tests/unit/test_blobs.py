"""Model files kept in host RAM (backends/blobs.py): what a load read is recorded, and
everything but the files still needed can be forgotten, descriptors included."""
from __future__ import annotations

import os

from edgesched.backends.blobs import Blobs


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_recording_names_what_a_load_read_and_keep_only_forgets_the_rest(tmp_path):
    a, b, c = (tmp_path / f"{n}.onnx" for n in "abc")
    for i, path in enumerate((a, b, c)):
        path.write_bytes(b"x" * (10 + i))
    blobs = Blobs()
    before = _fds()
    with blobs.recording() as seen:
        blobs.read(a)
        blobs.source(b)
    blobs.read(c)                                   # outside the recording
    assert seen == {a.resolve(), b.resolve()}
    assert blobs.held_bytes == 10 + 11 + 12
    blobs.keep_only(seen)
    assert a in blobs and b in blobs and c not in blobs
    assert blobs.held_bytes == 21
    blobs.keep_only([])
    assert blobs.held_bytes == 0 and _fds() <= before      # the memfds are closed
    assert blobs.read(a) == b"x" * 10 and blobs.disk_reads == 4   # read again when needed
