"""Sliced models compute what the whole model computes: the test graphs and onnx's CNNs.

Equivalence runs every slice through ONNX Runtime in manifest order, feeding each its inputs
from one dict of live tensors, and compares with the whole model, including every tensor that
crosses a cut (the onnx "light" CNNs have constant weights, so their final outputs alone say
little).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgesched.modelfiles.slicing import slice_model
from tests.unit.slicing_helpers import (
    KIND_PARTS,
    LIGHT,
    PARTS,
    TOL,
    needs_ort,
    reads,
    run_reference,
    run_sliced,
)

# --- equivalence ----------------------------------------------------------------------------

@needs_ort
@pytest.mark.parametrize("kind, parts", KIND_PARTS)
def test_slices_run_in_order_reproduce_the_model(sliced, kind, parts):
    case, path, manifest, plan = sliced(kind, parts)
    if case.compute_nodes < parts:
        assert len(manifest.slices) == case.compute_nodes
        assert any(str(parts) in note and str(case.compute_nodes) in note
                   for note in plan.notes), plan.notes
    else:
        assert len(manifest.slices) == parts
        assert not any("only" in note for note in plan.notes), plan.notes
    assert len(plan.bounds) == len(manifest.slices)
    crossing = [t for entry in manifest.slices for t in entry.outputs]
    for seed in (0, 1):                     # the If graphs take both branches
        feeds = case.feeds(seed)
        expected = run_reference(case.model, feeds, crossing)
        got = run_sliced(manifest, feeds)
        for spec in manifest.outputs:
            assert got[spec.name].shape == expected[spec.name].shape
            np.testing.assert_allclose(got[spec.name], expected[spec.name], **TOL,
                                       err_msg=f"model output {spec.name}")
        for name in crossing:
            np.testing.assert_allclose(got[name], expected[name], **TOL,
                                       err_msg=f"cut tensor {name}")


def test_if_branches_reading_outer_scope_tensors_get_them_across_cuts(sliced):
    # h0 is read only inside the If branches (two of them nested); whatever the cut, the
    # slice holding an If receives every outer-scope tensor its branches read.
    for parts in PARTS:
        _, _, manifest, _ = sliced("if_input", parts)
        made: set[str] = set()
        for entry in manifest.slices:
            model = onnx.load(str(manifest.slice_path(entry)))
            for node in model.graph.node:
                if node.op_type == "If":
                    outer = reads(node) - {t.name for t in model.graph.initializer}
                    assert outer <= set(entry.inputs) | made, (parts, entry.index, outer)
                made |= set(node.output)


# --- the real CNNs shipped with onnx ---------------------------------------------------------

@needs_ort
@pytest.mark.skipif(not LIGHT.is_dir(), reason="onnx backend test data not installed")
@pytest.mark.parametrize("name, parts", [("squeezenet", 4), ("inception_v1", 4),
                                         ("resnet50", 3), ("densenet121", 3)])
def test_light_cnns_slice_equivalently_and_balanced(tmp_path, name, parts):
    path = LIGHT / f"light_{name}.onnx"
    manifest, plan = slice_model(path, parts, tmp_path / name)
    assert len(manifest.slices) == parts
    assert plan.balance <= 1.5, plan
    model = onnx.load(str(path))
    assert model.ir_version == 3
    feeds = {t.name: np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)
             for t in manifest.inputs}
    crossing = [t for c in plan.crossing for t in c]
    expected = run_reference(model, feeds, crossing)
    got = run_sliced(manifest, feeds)
    for name_ in [t.name for t in manifest.outputs] + crossing:
        np.testing.assert_allclose(got[name_], expected[name_], **TOL, err_msg=name_)
    for entry in manifest.slices:     # weights are ConstantOfShape nodes: never cut tensors
        assert not any(t.endswith("__SHAPE") for t in entry.inputs)
        assert set(entry.inputs) <= {t.name for t in manifest.inputs} | set(crossing)
