"""200 load/unload cycles on ONNX Runtime keep the process's RSS and open file descriptors
flat (a model that comes and goes under the memory budget or a reload must not cost memory each
time). Each cycle loads a real model from its kept bytes, runs one request and unloads it."""
from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import numpy as np

from edgesched.backends import ort_footprint
from edgesched.backends.base import Doorbell
from edgesched.backends.blobs import Blobs
from edgesched.backends.onnxruntime import OnnxRuntimeBackend
from edgesched.types import Launch
from tests.models import EXAMPLES, example_input

WARM_UP, CYCLES = 20, 200
RSS_GROWTH_BYTES = 4 * 1024 * 1024   # the bound after warm-up: a leak of one 0.7 MB model
                                     # per cycle would pass it in 6 cycles


def _settled_rss() -> int:
    """RSS once freed memory is given back: garbage collected, and glibc's free heap pages
    returned (malloc_trim), so what is measured is what is still allocated (without the trim
    the allocator's free lists alone move it by several MiB between runs)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):     # no glibc: measured untrimmed
        pass
    return ort_footprint.rss_bytes()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _cycle(backend: OnnxRuntimeBackend, path: Path, request_id: int) -> None:
    backend.load("m", path, 1)
    backend.stage(request_id, "m", example_input("convnet", 0))
    backend.launch(Launch(request_id, "m", 0, 0))
    done = []
    while not done:
        done = backend.poll(5.0)
    assert done[0].error is None
    assert np.isfinite(backend.fetch(request_id)["logits"]).all()
    backend.unload("m")


def test_200_load_unload_cycles_keep_rss_and_fds_flat():
    backend = OnnxRuntimeBackend(1)
    backend.bind(Doorbell())
    backend.blobs = Blobs()
    path = EXAMPLES / "convnet.onnx"
    try:
        for k in range(WARM_UP):
            _cycle(backend, path, k)
        rss, fds = _settled_rss(), _open_fds()
        for k in range(WARM_UP, CYCLES):
            _cycle(backend, path, k)
        assert _settled_rss() - rss < RSS_GROWTH_BYTES
        assert _open_fds() == fds
        assert backend.blobs.disk_reads == 1
    finally:
        backend.close()
