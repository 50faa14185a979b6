"""`edgesched bench overhead` runs end to end (a few requests per path: a smoke test, not a
measurement; the README's figures come from a full run)."""
from __future__ import annotations

import re

import pytest

from edgesched.commands.bench import bench_overhead
from edgesched.config import load_config
from tests.models import REPO_ROOT

pytest.importorskip("onnxruntime")


def test_bench_overhead_reports_every_path_and_the_null_servers_floor():
    config = load_config(REPO_ROOT / "configs" / "default.yaml")
    report = bench_overhead(config, "attention", n=20, warmup=5)
    figures = {}
    for line in report.splitlines():
        found = re.match(r"\s*(\(\w\)[^0-9]*?|server overhead \(a\)-\(b\)|above the null server"
                         r" \(a\)-\(b\)-\(d\))\s+(-?[\d.]+)", line)
        if found:
            figures[found.group(1).split()[0] if found.group(1).startswith("(")
                    else found.group(1)] = float(found.group(2))
    for path in ("(a)", "(b)", "(c)", "(d)"):
        assert figures[path] > 0, report
    assert figures["server overhead (a)-(b)"] == pytest.approx(figures["(a)"] - figures["(b)"],
                                                               abs=0.02)
    assert re.search(r"floor of that ratio with this client: [\d.]+$", report), report
