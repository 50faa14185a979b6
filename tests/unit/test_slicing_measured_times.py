"""Measured per-node times move the slicer's cuts."""
from __future__ import annotations

import pytest

from edgesched.modelfiles.slicing import BALANCE_SLACK, plan_slices, slice_model
from tests.unit.slicing_helpers import compute_nodes, node_costs, optimal_bound

# --- measured per-node times ----------------------------------------------------------------

def test_measured_times_move_the_cuts(saved):
    case, _ = saved("residual")
    nodes = compute_nodes(case.model)
    baseline = plan_slices(case.model, 3)
    measured = {n.name: 10.0 for n in nodes}
    heavy = 2                                         # block 0's first conv: early
    assert nodes[heavy].op_type == "Conv"
    measured[nodes[heavy].name] = 1000.0
    plan = plan_slices(case.model, 3, measured_us=measured)
    assert plan.bounds[0][1] < baseline.bounds[0][1]
    assert plan.bounds[0][1] <= heavy + 1       # the first slice ends at (or right after) it
    assert sum(plan.costs_us) == pytest.approx(10.0 * (len(nodes) - 1) + 1000.0)
    assert max(plan.costs_us) <= BALANCE_SLACK * 1000.0


def test_uniform_measured_times_cut_equal_node_counts(saved):
    case, _ = saved("residual")
    nodes = compute_nodes(case.model)
    assert len(nodes) == 25
    plan = plan_slices(case.model, 5, measured_us={n.name: 7.0 for n in nodes})
    assert [b - a for a, b in plan.bounds] == [5] * 5
    assert plan.costs_us == (35.0,) * 5 and plan.balance == 1.0


def test_measured_times_partial_and_unknown_names(saved, tmp_path):
    case, path = saved("residual")
    nodes = compute_nodes(case.model)
    late = len(nodes) - 4                               # the last block's Relu
    measured = {nodes[late].name: 5000.0, "no_such_node": 1e9}
    baseline = plan_slices(case.model, 3)
    plan = plan_slices(case.model, 3, measured_us=measured)
    costs = node_costs(case.model, measured)
    assert plan.bounds != baseline.bounds
    assert sum(plan.costs_us) == pytest.approx(sum(costs))
    (holder,) = [k for k, (a, b) in enumerate(plan.bounds) if a <= late < b]
    assert plan.costs_us[holder] == max(plan.costs_us) <= BALANCE_SLACK * optimal_bound(costs, 3)
    manifest, written = slice_model(path, 3, tmp_path / "m", measured_us=measured)
    assert written.bounds == plan.bounds
    assert [e.cost["est_us"] for e in manifest.slices] == \
        [pytest.approx(c, abs=1e-3) for c in plan.costs_us]
