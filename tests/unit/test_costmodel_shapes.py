"""The cost model at given input shapes: inputs set before inference, every dim concrete."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesched.modelfiles import costmodel as cm
from edgesched.modelfiles.shaping import tensor_ranges
from edgesched.shapes import ShapeError, ShapeRange
from tests.models import build_dynamic_convnet


def fixed(shape) -> ShapeRange:
    return ShapeRange.fixed_at(shape)


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory) -> onnx.ModelProto:
    return onnx.load(str(build_dynamic_convnet(tmp_path_factory.mktemp("d") / "d.onnx")))


def test_costs_follow_the_given_shape_and_nothing_is_a_guess(dynamic):
    small = cm.analyze(dynamic, {"image": fixed((1, 3, 320, 320))})
    big = cm.analyze(dynamic, {"image": fixed((1, 3, 640, 640))})
    batch = cm.analyze(dynamic, {"image": fixed((4, 3, 320, 320))})
    assert not any(n.estimated for n in small.nodes + big.nodes)
    assert big.total_flops / small.total_flops == pytest.approx(4.0, rel=0.01)
    assert batch.total_flops / small.total_flops == pytest.approx(4.0, rel=0.01)
    # activations grow 4x; the weights stay the same: bytes grow a little less than 4x
    assert 3.5 < big.total_bytes / small.total_bytes <= 4.0


def test_a_range_is_costed_at_opt(dynamic):
    ranged = ShapeRange((1, 3, 224, 224), (2, 3, 320, 320), (8, 3, 640, 640))
    assert cm.analyze(dynamic, {"image": ranged}) == cm.analyze(
        dynamic, {"image": fixed((2, 3, 320, 320))})


def test_without_shapes_dynamic_dims_still_count_as_1_and_are_marked(dynamic):
    report = cm.analyze(dynamic)
    assert any(n.estimated for n in report.nodes)
    assert report.total_flops < cm.analyze(dynamic, {"image": fixed((1, 3, 8, 8))}).total_flops


def test_given_shapes_must_cover_every_dynamic_input(dynamic):
    with pytest.raises(ShapeError, match="input 'image' has dynamic dimensions"):
        cm.analyze(dynamic, {})
    with pytest.raises(ShapeError, match="does not fit"):
        cm.analyze(dynamic, {"image": fixed((1, 3, 8))})


def test_a_static_model_costs_the_same_with_empty_shapes():
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert cm.analyze(model, {}) == cm.analyze(model)


def test_declared_shapes_of_other_tensors_do_not_override_the_given_ones(dynamic):
    # exported with a fixed batch on the output and a stale value_info: inference keeps a
    # declared shape over the one it infers, so the costing copy forgets them
    model = onnx.ModelProto()
    model.CopyFrom(dynamic)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = 1
    model.graph.value_info.append(
        helper.make_tensor_value_info("stem", TensorProto.FLOAT, [1, 16, 4, 4]))
    before = model.SerializeToString()
    shapes = cm.tensor_shapes(model, {"image": fixed((4, 3, 64, 64))})
    assert shapes["logits"] == (4, 10) and shapes["stem"] == (4, 16, 32, 32)
    assert model.SerializeToString() == before             # the caller's model is untouched


def test_symbolic_dims_flow_through_shape_arithmetic():
    # tokens [batch, seq, 64] -> Reshape to [-1, 64] -> MatMul: data propagation makes the
    # flattened dim batch * seq
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "W")
    target = numpy_helper.from_array(np.array([-1, 64], np.int64), "target")
    nodes = [helper.make_node("Reshape", ["tokens", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("tokens", TensorProto.FLOAT,
                                                   ["batch", "seq", 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = {"tokens": ShapeRange((1, 8, 64), (2, 128, 64), (4, 512, 64))}
    assert cm.tensor_shapes(model, shapes)["out"] == (256, 32)
    (matmul,) = [n for n in cm.analyze(model, shapes).nodes if n.op_type == "MatMul"]
    assert matmul.flops == 2 * 256 * 64 * 32 and not matmul.estimated
    assert tensor_ranges(model, shapes)["out"] == ShapeRange((8, 32), (256, 32), (2048, 32))


def test_a_static_model_at_its_declared_shapes_keeps_a_custom_ops_declared_output():
    node = helper.make_node("FancyOp", ["X"], ["Y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          [1, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2, 50])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    report = cm.analyze(model, {"X": fixed((1, 8))})
    assert report == cm.analyze(model) and report.nodes[0].flops == 4 * 100
