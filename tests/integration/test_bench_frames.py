"""`edgesched bench frames` runs end to end (a few requests per path: a smoke test, not a
measurement; the README's figures come from a full run)."""
from __future__ import annotations

import pytest

from edgesched.commands.bench_frames import bench_frames

pytest.importorskip("onnxruntime")


def test_bench_frames_reports_every_size_and_path():
    report = bench_frames(n=10, warmup=2)
    for label in ("64 B", "640x480", "1080p", "4K"):
        for path in ("copy", "shm", "echo", "model"):
            assert any(line.split()[:3] == [*label.split(), path] or
                       line.split()[:2] == [label, path] for line in report.splitlines())
    assert "shm overhead 1080p / 64 B at p50" in report
