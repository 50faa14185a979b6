"""The demo's closing comparison: the served example models on a simulated Jetson, per policy,
labelled simulated."""
from __future__ import annotations

from edgesched.commands.demo import SIM_POLICIES, simulated_comparison

SPECS = [{"name": "convnet", "priority": "realtime", "slo_ms": 50},
         {"name": "depthwise", "priority": "realtime", "slo_ms": 100},
         {"name": "attention", "priority": "best_effort", "slo_ms": 250}]


def test_the_comparison_is_labelled_simulated_with_a_row_per_policy():
    text = simulated_comparison(SPECS, seconds=0.3)
    assert text.startswith("SIMULATED")
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:3 + len(SIM_POLICIES)]}
    assert list(rows) == list(SIM_POLICIES)
    assert float(rows["fifo"][3]) == 1.0          # best-effort work relative to fifo's


def test_models_without_a_shipped_file_are_left_out():
    assert "no simulated comparison" in simulated_comparison(
        [{"name": "mine", "priority": "realtime", "slo_ms": 10}], seconds=0.3)
