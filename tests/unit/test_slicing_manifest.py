"""The slicer's manifest contract, constant model outputs, and cuts around untyped tensors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgesched.modelfiles.manifest import read_manifest
from edgesched.modelfiles.slicing import slice_model
from tests.unit.slicing_helpers import (
    CONSTANT_OPS,
    KIND_PARTS,
    compute_nodes,
    constant_tensors,
    needs_ort,
    reads,
    run_sliced,
)

# --- manifest contract ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, parts", KIND_PARTS)
def test_manifest_contract(sliced, kind, parts):
    case, path, manifest, plan = sliced(kind, parts)
    model = case.model
    const, _ = constant_tensors(model)
    graph_inputs = [i.name for i in model.graph.input if i.name not in
                    {t.name for t in model.graph.initializer}]
    assert [t.name for t in manifest.inputs] == graph_inputs
    assert [t.name for t in manifest.outputs] == [o.name for o in model.graph.output]

    # read_manifest accepts exactly what slice_model wrote
    assert read_manifest(manifest.directory) == manifest

    available = set(graph_inputs)
    compute_order = []
    for k, entry in enumerate(manifest.slices):
        assert set(entry.inputs) <= available, (k, set(entry.inputs) - available)
        assert not set(entry.inputs) & const, f"slice {k} receives a constant tensor"
        file = manifest.slice_path(entry)
        onnx.checker.check_model(str(file), full_check=True)
        sub = onnx.load(str(file))
        g = sub.graph
        inits = {t.name for t in g.initializer}
        assert [i.name for i in g.input if i.name not in inits] == list(entry.inputs)
        if model.ir_version < 4:
            assert {i.name for i in g.input} == set(entry.inputs) | inits
        else:
            assert [i.name for i in g.input] == list(entry.inputs)
        assert [o.name for o in g.output] == list(entry.outputs)
        read_here = set().union(*(reads(n) for n in g.node))
        made_here = {o for n in g.node for o in n.output}
        assert inits <= read_here, f"slice {k} carries unread initializers {inits - read_here}"
        unused = {o for n in g.node if n.op_type in CONSTANT_OPS for o in n.output} - read_here
        assert not unused, f"slice {k} carries unread constants {unused}"
        assert read_here <= inits | made_here | set(entry.inputs)
        mine = [n.name for n in g.node if n.name not in {m.name for m in model.graph.node
                                                          if m.output[0] in const}]
        assert mine, f"slice {k} has no compute node"
        compute_order += mine
        start, end = plan.bounds[k]
        assert entry.cost["nodes"] == end - start == len(mine)
        assert entry.cost["est_us"] == pytest.approx(plan.costs_us[k], abs=1e-3)
        available |= set(entry.outputs)
    # the compute nodes are partitioned, in order
    assert compute_order == [n.name for n in compute_nodes(model)]
    assert len(compute_order) == case.compute_nodes
    # every model output is produced by some slice
    assert {o.name for o in model.graph.output} <= available
    # every slice output is a model output or read later; the plan's crossing lists agree
    outputs = {o.name for o in model.graph.output}
    for k, entry in enumerate(manifest.slices):
        later = set().union(set(), *(set(e.inputs) for e in manifest.slices[k + 1:]))
        assert set(entry.outputs) <= later | outputs, (k, set(entry.outputs) - later - outputs)
    for k in range(len(manifest.slices) - 1):
        before = set().union(*(set(e.outputs) for e in manifest.slices[:k + 1]))
        after = set().union(*(set(e.inputs) for e in manifest.slices[k + 1:]))
        assert set(plan.crossing[k]) == before & after, k


@needs_ort
@pytest.mark.parametrize("where", ["constant_node", "initializer"])
def test_constant_model_outputs_are_produced_by_a_slice(tmp_path, where):
    # e.g. a detector that also outputs its fixed anchor boxes. BUG: slice_model writes a
    # manifest whose constant output no slice produces, so read_manifest (and every backend)
    # rejects the directory slice_model just wrote.
    anchors = np.arange(8, dtype=np.float32).reshape(2, 4)
    nodes = [helper.make_node("Relu", ["x"], ["r1"], name="r1"),
             helper.make_node("Tanh", ["r1"], ["r2"], name="r2"),
             helper.make_node("Relu", ["r2"], ["y"], name="r3")]
    inits = []
    if where == "constant_node":
        nodes.append(helper.make_node("Constant", [], ["anchors"], name="anchors",
                                      value=numpy_helper.from_array(anchors, "a")))
    else:
        inits.append(numpy_helper.from_array(anchors, "anchors"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4]),
                               helper.make_tensor_value_info("anchors", 1, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    manifest, _ = slice_model(tmp_path / "m.onnx", 2, tmp_path / "out")
    read_manifest(tmp_path / "out")
    feeds = {"x": np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)}
    got = run_sliced(manifest, feeds)
    np.testing.assert_array_equal(got["anchors"], anchors)


def custom_op_model() -> onnx.ModelProto:
    """x -> Relu -> Tanh -> MyPlugin (custom domain: ONNX cannot type its output, nor the
    Relu after it) -> Relu -> Tanh -> y; think of a TensorRT plugin op mid-network."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r0"),
             helper.make_node("Tanh", ["a"], ["b"], name="t0"),
             helper.make_node("MyPlugin", ["b"], ["c"], domain="com.example", name="plug"),
             helper.make_node("Relu", ["c"], ["d"], name="r1"),
             helper.make_node("Tanh", ["d"], ["y"], name="t1")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [vi("x", 1, [1, 64])], [vi("y", 1, [1, 64])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def test_cuts_avoid_tensors_of_unknown_type_when_typed_cut_points_exist(tmp_path):
    # `c` (the plugin's untyped output) cannot be an engine boundary; `a` or `b` can.
    onnx.save(custom_op_model(), str(tmp_path / "m.onnx"))
    manifest, plan = slice_model(tmp_path / "m.onnx", 2, tmp_path / "out")
    assert len(manifest.slices) == 2 and plan.crossing[0][0] in ("a", "b")
    read_manifest(tmp_path / "out")


def test_cut_points_at_untyped_tensors_are_skipped_and_reported(tmp_path):
    onnx.save(custom_op_model(), str(tmp_path / "m.onnx"))
    # 5 slices would need a cut at every position, two of them after the untyped custom op.
    manifest, plan = slice_model(tmp_path / "m.onnx", 5, tmp_path / "out")
    assert len(manifest.slices) < 5
    assert any("no inferred type" in n for n in plan.notes), plan.notes
    assert any("slices are possible" in n for n in plan.notes), plan.notes
    crossing = {t for s in manifest.slices[1:] for t in s.inputs}
    assert not crossing & {"c", "d"}, crossing
    read_manifest(tmp_path / "out")
