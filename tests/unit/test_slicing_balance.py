"""Slice plans: cuts balanced within the documented slack of optimal, and narrow cuts."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from edgesched.modelfiles.slicing import BALANCE_SLACK, SlicePlan, plan_slices
from tests import graphs
from tests.unit.slicing_helpers import PARTS, compute_indices, node_costs, optimal_bound, reads

# --- balance --------------------------------------------------------------------------------

def big_residual() -> onnx.ModelProto:
    # Realistic shapes (costed only, never run): 16 blocks of 64 channels at 56x56.
    return graphs.residual_chain(blocks=16, channels=64, size=56).model


@pytest.fixture(scope="module")
def residual16():
    model = big_residual()
    return model, node_costs(model), {n: plan_slices(model, n) for n in PARTS}


@pytest.mark.parametrize("parts", PARTS)
def test_residual_chain_is_balanced(residual16, parts):
    model, costs, plans = residual16
    plan = plans[parts]
    assert len(plan.bounds) == parts
    assert plan.balance <= 1.5, plan
    # The documented rule: the largest slice is at most BALANCE_SLACK x the best possible.
    assert max(plan.costs_us) <= BALANCE_SLACK * optimal_bound(costs, parts) * (1 + 1e-9)


@pytest.mark.parametrize("kind", sorted(graphs.ALL_KINDS))
def test_largest_slice_is_within_the_documented_slack_of_optimal(saved, kind):
    case, _ = saved(kind)
    costs = node_costs(case.model)
    for parts in PARTS:
        plan = plan_slices(case.model, parts)
        k = min(parts, len(costs))
        assert max(plan.costs_us) <= BALANCE_SLACK * optimal_bound(costs, k) * (1 + 1e-9), \
            (parts, plan)


@pytest.mark.parametrize("kind", sorted(graphs.ALL_KINDS))
def test_plan_costs_and_balance_agree(saved, kind):
    case, _ = saved(kind)
    costs = node_costs(case.model)
    for parts in (2, 5):
        plan = plan_slices(case.model, parts)
        assert plan.bounds[0][0] == 0 and plan.bounds[-1][1] == len(costs)
        assert all(a < b for a, b in plan.bounds)
        assert all(b == c for (_, b), (c, _) in zip(plan.bounds, plan.bounds[1:]))
        for (a, b), cost in zip(plan.bounds, plan.costs_us):
            assert cost == pytest.approx(sum(costs[a:b]), rel=1e-9)
        mean = sum(plan.costs_us) / len(plan.costs_us)
        assert plan.balance == pytest.approx(max(plan.costs_us) / mean, rel=1e-12)
        assert len(plan.crossing) == len(plan.bounds) - 1


def test_balance_property_on_a_handmade_plan():
    plan = SlicePlan(((0, 1), (1, 3)), (10.0, 30.0), (("t",),), ())
    assert plan.balance == pytest.approx(1.5)


@pytest.mark.parametrize("parts", [2, 3, 4, 6])
def test_one_dominating_node_is_explained_in_a_note(parts):
    case = graphs.dominated()
    costs = node_costs(case.model)
    heavy = max(costs)
    limit = heavy * parts / sum(costs)
    plan = plan_slices(case.model, parts)
    (note,) = [n for n in plan.notes if "big_matmul" in n]
    stated = float(re.findall(r"\d+\.\d+", note)[-1])
    assert stated == pytest.approx(limit, abs=0.006)
    assert f"{100 * heavy / sum(costs):.0f}%" in note
    assert plan.balance >= limit - 1e-9
    # the heavy node is alone in its slice whenever more than two slices are asked for
    if parts > 2:
        assert any(c == pytest.approx(heavy, rel=1e-9) for c in plan.costs_us)


def test_no_dominating_node_note_on_an_even_chain(residual16):
    _, _, plans = residual16
    for parts in PARTS:
        assert not any("alone" in note for note in plans[parts].notes), plans[parts].notes


# --- narrow cuts ----------------------------------------------------------------------------

def narrowest_bound(model: onnx.ModelProto, costs: list[float], parts: int) -> float:
    """The best largest-slice cost using only cuts where one computed tensor crosses."""
    g = model.graph
    order = compute_indices(model)
    made_at = {o: k for k, i in enumerate(order) for o in g.node[i].output}
    last = {}
    for k, i in enumerate(order):
        for x in reads(g.node[i]):
            if x in made_at:
                last[x] = k
    n = len(order)
    points = [c for c in range(1, n)
              if sum(1 for t, p in made_at.items() if p < c <= last.get(t, -1)) == 1]
    edges = [0, *points, n]
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    best = {(0, 0): 0.0}
    for k in range(1, parts + 1):
        for j in range(1, len(edges)):
            best[k, j] = min((max(best[k - 1, i], prefix[edges[j]] - prefix[edges[i]])
                              for i in range(j) if (k - 1, i) in best), default=np.inf)
    return best[parts, len(edges) - 1]


@pytest.mark.parametrize("parts", PARTS)
def test_residual_chain_cuts_pass_one_tensor_when_balance_allows(residual16, parts):
    model, costs, plans = residual16
    plan = plans[parts]
    narrow = narrowest_bound(model, costs, parts)
    if narrow <= BALANCE_SLACK * optimal_bound(costs, parts) * (1 - 1e-6):
        assert all(len(c) == 1 for c in plan.crossing), plan.crossing
        # between blocks: a block's output, or its Add just before the final Relu
        assert all(re.fullmatch(r"block\d+|stem|add_\d+", c[0]) for c in plan.crossing)
    if parts in (2, 4, 8):            # 16 blocks: an even split at block boundaries exists
        assert all(len(c) == 1 for c in plan.crossing), plan.crossing


def test_residual_chain_cuts_never_pass_more_than_the_skip_and_the_main_path(residual16):
    _, _, plans = residual16
    for parts in PARTS:
        assert all(1 <= len(c) <= 2 for c in plans[parts].crossing), (parts, plans[parts])


def test_narrow_cut_preferred_when_balance_allows(saved):
    # small residual chain, 4 blocks (25 compute nodes) in 3: width-1 cuts exist within slack
    case, _ = saved("residual")
    plan = plan_slices(case.model, 3)
    assert [len(c) for c in plan.crossing] == [1, 1]
