"""Cost model: exact FLOP/byte counts on tiny graphs, robustness, and totals on real CNNs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgesched.modelfiles import costmodel as cm

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "engines" / "examples").glob("*.onnx"))
# onnx ships the backend-test CNNs as "light" models: the real graphs at 224x224 batch 1, with
# every weight made by a ConstantOfShape over an initializer shape (IR 3, opset 9).
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
F32 = TensorProto.FLOAT


def init(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def vinfo(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    """inputs/outputs: (name, shape[, dtype]); shape None leaves the output shape to inference."""
    vi, vo = [vinfo(*spec) for spec in inputs], [vinfo(*spec) for spec in outputs]
    graph = helper.make_graph(nodes, "g", vi, vo, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.example", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir)


def one(m) -> cm.NodeCost:
    """The cost of a one-node model."""
    (node,) = cm.analyze(m).nodes
    return node


def conv_model(x_shape, w_shape, bias, **attrs):
    inits = [init("W", *w_shape)] + ([init("B", w_shape[0])] if bias else [])
    node = helper.make_node("Conv", ["X", "W"] + (["B"] if bias else []), ["Y"], **attrs)
    return model([node], [("X", x_shape)], [("Y", None)], inits)


# (x shape, w shape, attrs, output elements, MACs per output element = C_in/group * prod(k))
CONVS = {
    "plain": ((1, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, 4 * 64, 27),
    "grouped": ((1, 4, 8, 8), (6, 2, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, 6 * 64, 18),
    "depthwise": ((1, 8, 8, 8), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8}, 8 * 64, 9),
    "strided": ((2, 3, 9, 9), (4, 3, 3, 3), {"strides": [2, 2]}, 2 * 4 * 16, 27),
    "pointwise": ((1, 16, 5, 5), (32, 16, 1, 1), {}, 32 * 25, 16),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_flops_and_bytes(case, bias):
    x_shape, w_shape, attrs, out_elems, macs = CONVS[case]
    node = one(conv_model(x_shape, w_shape, bias, **attrs))
    assert node.flops == 2 * out_elems * macs + (out_elems if bias else 0)
    assert node.weight_bytes == 4 * (np.prod(w_shape) + (w_shape[0] if bias else 0))
    assert node.input_bytes == 4 * np.prod(x_shape)
    assert node.output_bytes == 4 * out_elems
    assert node.bytes == node.weight_bytes + node.input_bytes + node.output_bytes
    assert not node.estimated


def test_conv_transpose_scatters_each_input_element():
    # X (1,4,5,5), W (C_in=4, C_out=2, 3, 3), stride 2 -> Y (1,2,11,11).
    node = helper.make_node("ConvTranspose", ["X", "W"], ["Y"], strides=[2, 2])
    cost = one(model([node], [("X", (1, 4, 5, 5))], [("Y", None)], [init("W", 4, 2, 3, 3)]))
    assert cost.flops == 2 * 100 * 2 * 9
    assert cost.output_bytes == 4 * 2 * 11 * 11


@pytest.mark.parametrize("trans_a, trans_b", [(0, 1), (1, 0), (0, 0)])
def test_gemm_respects_transposes(trans_a, trans_b):
    m_, k, n = 3, 8, 16
    a_shape = (k, m_) if trans_a else (m_, k)
    b_shape = (n, k) if trans_b else (k, n)
    node = helper.make_node("Gemm", ["A", "B", "C"], ["Y"], transA=trans_a, transB=trans_b)
    cost = one(model([node], [("A", a_shape)], [("Y", None)], [init("B", *b_shape), init("C", n)]))
    assert cost.flops == 2 * m_ * n * k + m_ * n
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes) == (4 * (k * n + n), 4 * m_ * k, 4 * m_ * n)


@pytest.mark.parametrize("a, b, out", [
    ((2, 3, 4, 5), (5, 6), (2, 3, 4, 6)),         # batched x shared weight
    ((2, 1, 4, 5), (3, 5, 6), (2, 3, 4, 6)),      # broadcast batch dims
    ((4, 5), (5,), (4,)),                         # matrix x vector
])
def test_matmul_batched_and_broadcast(a, b, out):
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    cost = one(model([node], [("A", a), ("B", b)], [("Y", None)]))
    assert cost.flops == 2 * np.prod(out) * 5
    assert cost.weight_bytes == 0 and cost.input_bytes == 4 * (np.prod(a) + np.prod(b))


def test_einsum_counts_the_index_space():
    node = helper.make_node("Einsum", ["A", "B"], ["Y"], equation="bij,bjk->bik")
    cost = one(model([node], [("A", (2, 3, 4)), ("B", (2, 4, 5))], [("Y", None)]))
    assert cost.flops == 2 * 2 * 3 * 4 * 5 and not cost.estimated


@pytest.mark.parametrize("op, attrs, out_elems, per_out", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, 2 * 4 * 4, 4),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 2 * 8 * 8, 9),
    ("GlobalAveragePool", {}, 2, 64),   # reads every input element once
    ("GlobalMaxPool", {}, 2, 64),
])
def test_pooling(op, attrs, out_elems, per_out):
    node = helper.make_node(op, ["X"], ["Y"], **attrs)
    cost = one(model([node], [("X", (1, 2, 8, 8))], [("Y", None)]))
    assert cost.flops == out_elems * per_out
    assert cost.output_bytes == 4 * out_elems


@pytest.mark.parametrize("op, per_elem", [
    ("Relu", 1), ("Neg", 1), ("Sigmoid", 4), ("Tanh", 5), ("Erf", 5), ("Exp", 4),
    ("HardSwish", 4), ("Softmax", 5), ("LayerNormalization", 7), ("BatchNormalization", 2),
])
def test_elementwise_per_output_element(op, per_elem):
    extra, inits = [], []
    if op in ("LayerNormalization", "BatchNormalization"):
        params = {"LayerNormalization": [("g", 8), ("b", 8)],
                  "BatchNormalization": [("s", 3), ("b", 3), ("m", 3), ("v", 3)]}[op]
        extra, inits = [n for n, _ in params], [init(n, c) for n, c in params]
    node = helper.make_node(op, ["X", *extra], ["Y"])
    cost = one(model([node], [("X", (2, 3, 4, 8))], [("Y", None)], inits))
    assert cost.flops == per_elem * 2 * 3 * 4 * 8 and not cost.estimated


def test_broadcast_add_costs_per_output_element_and_splits_weight_from_activation():
    node = helper.make_node("Add", ["X", "B"], ["Y"])
    cost = one(model([node], [("X", (1, 3, 4, 4))], [("Y", None)], [init("B", 1, 3, 1, 1)]))
    assert cost.flops == 48
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes) == (12, 192, 192)


def test_variadic_sum_and_lrn():
    nodes = [helper.make_node("Sum", ["X", "X2", "X3"], ["S"]),
             helper.make_node("LRN", ["S"], ["Y"], size=5)]
    report = cm.analyze(model(nodes, [("X", (1, 4, 2, 2)), ("X2", (1, 4, 2, 2)),
                                      ("X3", (1, 4, 2, 2))], [("Y", None)]))
    assert [n.flops for n in report.nodes] == [2 * 16, (2 * 5 + 7) * 16]


def test_views_and_copies_move_bytes_without_flops():
    nodes = [helper.make_node("Reshape", ["X", "shape"], ["R"]),
             helper.make_node("Transpose", ["R"], ["T"], perm=[1, 0]),
             helper.make_node("Shape", ["T"], ["S"]),
             helper.make_node("Dropout", ["T"], ["Y"])]
    shape = numpy_helper.from_array(np.array([6, 4], dtype=np.int64), "shape")
    report = cm.analyze(model(nodes, [("X", (2, 3, 4))], [("Y", None), ("S", None, TensorProto.INT64)],
                                 [shape]))
    reshape, transpose, shape_op, dropout = report.nodes
    assert all(n.flops == 0 for n in report.nodes)
    # Views are counted as copies (input + output): the conservative choice.
    assert (reshape.weight_bytes, reshape.input_bytes, reshape.output_bytes) == (16, 96, 96)
    assert (transpose.input_bytes, transpose.output_bytes) == (96, 96)
    assert (shape_op.input_bytes, shape_op.output_bytes) == (0, 16)  # reads metadata only
    assert (dropout.input_bytes, dropout.output_bytes) == (96, 96)


def test_gather_reads_only_the_rows_it_writes():
    table = init("E", 1000, 16)
    node = helper.make_node("Gather", ["E", "ids"], ["Y"])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, (1, 4))
    graph = helper.make_graph([node], "g", [ids], [helper.make_tensor_value_info("Y", F32, None)],
                              initializer=[table])
    cost = one(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes) == (4 * 64, 32, 4 * 64)


def test_ir3_initializers_listed_as_inputs_are_weights():
    node = helper.make_node("Conv", ["X", "W"], ["Y"])
    m = model([node], [("X", (1, 3, 4, 4)), ("W", (2, 3, 1, 1))], [("Y", None)],
              [init("W", 2, 3, 1, 1)], opset=8, ir=3)
    cost = one(m)
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes) == (24, 192, 128)
    assert cost.flops == 2 * 32 * 3 and not cost.estimated


def test_constant_node_outputs_are_weights_and_folded_chains_too():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["Wc"], value=w),
             helper.make_node("Identity", ["Wc"], ["W"]),   # all-constant input: folded
             helper.make_node("Conv", ["X", "W"], ["Y"])]
    report = cm.analyze(model(nodes, [("X", (1, 3, 2, 2))], [("Y", None)]))
    constant, identity, conv = report.nodes
    assert constant.bytes == identity.bytes == 0 and constant.flops == identity.flops == 0
    assert (conv.weight_bytes, conv.input_bytes, conv.output_bytes) == (48, 48, 64)


def test_unknown_custom_op_is_estimated_and_counted_never_raised():
    nodes = [helper.make_node("FancyOp", ["X"], ["F"], domain="com.example"),
             helper.make_node("Relu", ["F"], ["Y"]),
             helper.make_node("Relu", ["X"], ["Z"])]
    report = cm.analyze(model(nodes, [("X", (1, 8, 4, 4))], [("Y", None), ("Z", None)]))
    fancy, relu_after, relu_clean = report.nodes
    assert report.unknown_ops == {"FancyOp": 1}
    assert fancy.estimated and fancy.flops > 0 and fancy.input_bytes == 512
    assert fancy.output_bytes == 512            # unknown shape: guessed like its input
    assert relu_after.estimated and relu_after.flops == 128
    assert not relu_clean.estimated
    assert report.missing_shapes == 2           # F has no shape: both nodes touching it


def test_shapes_after_an_unknown_op_are_inferred_again():
    nodes = [helper.make_node("FancyOp", ["X"], ["F"], domain="com.example"),
             helper.make_node("Conv", ["F", "W"], ["C"], strides=[2, 2]),
             helper.make_node("Relu", ["C"], ["Y"])]
    m = model(nodes, [("X", (1, 4, 8, 8))], [("Y", None)], [init("W", 16, 4, 1, 1)])
    before = m.SerializeToString()
    report = cm.analyze(m)
    assert m.SerializeToString() == before  # guesses go into a copy, never the caller's model
    _, conv, relu = report.nodes
    assert conv.estimated and conv.flops == 2 * 16 * 16 * 4 and conv.output_bytes == 4 * 256
    assert not relu.estimated and relu.flops == 256
    assert report.missing_shapes == 2


def test_unknown_op_with_declared_output_shape_uses_it():
    node = helper.make_node("FancyOp", ["X"], ["Y"], domain="com.example")
    report = cm.analyze(model([node], [("X", (1, 8))], [("Y", (1, 2, 50))]))
    assert report.nodes[0].flops == 4 * 100 and report.nodes[0].estimated
    assert report.missing_shapes == 0 and report.unknown_ops == {"FancyOp": 1}


def test_if_subgraph_is_unknown_not_an_error():
    branch = helper.make_graph([helper.make_node("Identity", ["X"], ["O"])], "b", [],
                               [helper.make_tensor_value_info("O", F32, (2, 2))])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, ())
    node = helper.make_node("If", ["c"], ["Y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [cond, helper.make_tensor_value_info("X", F32, (2, 2))],
                              [helper.make_tensor_value_info("Y", F32, None)])
    report = cm.analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert report.unknown_ops == {"If": 1} and report.nodes[0].estimated


def test_dynamic_batch_counts_as_one_and_is_estimated():
    m = conv_model(("N", 3, 8, 8), (4, 3, 3, 3), bias=False, pads=[1, 1, 1, 1])
    node = one(m)
    assert node.flops == 2 * 256 * 27 and node.output_bytes == 4 * 256
    assert node.estimated
    report = cm.analyze(m)
    assert report.missing_shapes == 0 and report.unknown_ops == {}
    assert cm.tensor_shapes(m)["Y"] == (None, 4, 8, 8)
    assert cm.tensor_bytes(m)["Y"] is None and cm.tensor_bytes(m)["W"] == 4 * 108


def test_tensor_maps_cover_inputs_initializers_and_inferred_tensors():
    m = conv_model((1, 3, 8, 8), (4, 3, 3, 3), bias=True, pads=[1, 1, 1, 1])
    assert cm.tensor_shapes(m) == {"X": (1, 3, 8, 8), "W": (4, 3, 3, 3), "B": (4,),
                                   "Y": (1, 4, 8, 8)}
    assert cm.tensor_bytes(m) == {"X": 768, "W": 432, "B": 16, "Y": 1024}


def test_totals_equal_sums_and_names_default():
    nodes = [helper.make_node("Conv", ["X", "W"], ["C"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["C"], ["Y"], name="act")]
    report = cm.analyze(model(nodes, [("X", (1, 3, 8, 8))], [("Y", None)], [init("W", 4, 3, 3, 3)]))
    assert report.total_flops == sum(n.flops for n in report.nodes)
    assert report.total_bytes == sum(n.bytes for n in report.nodes)
    assert [(n.index, n.name) for n in report.nodes] == [(0, "Conv_0"), (1, "act")]


def test_roofline_picks_the_larger_bound():
    assert cm.roofline_us(2e9, 1e3, peak_flops=1e12, peak_bytes_per_s=1e11) == pytest.approx(2000)
    assert cm.roofline_us(1e3, 2e8, peak_flops=1e12, peak_bytes_per_s=1e11) == pytest.approx(2000)
    assert cm.roofline_us(0, 0, 1e12, 1e11) == 0
    with pytest.raises(ValueError):
        cm.roofline_us(1, 1, 0, 1e11)


def chain(steps, batch):
    """A chain of ops over an (batch, C, 6, 6) tensor; channels are tracked here, not inferred."""
    nodes, inits, cur, channels = [], [], "X", 4
    for i, (op, width) in enumerate(steps):
        out = f"t{i}"
        if op == "Conv":
            group = channels if width == 0 else 1
            c_out = channels if group > 1 else width
            inits.append(init(f"w{i}", c_out, channels // group, 3, 3))
            nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [out], pads=[1] * 4, group=group))
            channels = c_out
        elif op == "Add":
            inits.append(init(f"b{i}", 1, channels, 1, 1))
            nodes.append(helper.make_node("Add", [cur, f"b{i}"], [out]))
        elif op == "MaxPool":
            nodes.append(helper.make_node(op, [cur], [out], kernel_shape=[3, 3], pads=[1] * 4))
        elif op == "Transpose":
            nodes.append(helper.make_node(op, [cur], [out], perm=[0, 1, 3, 2]))
        elif op == "Custom":
            nodes.append(helper.make_node("Blur", [cur], [out], domain="com.example"))
        else:
            nodes.append(helper.make_node(op, [cur], [out]))
        cur = out
    return model(nodes, [("X", (batch, 4, 6, 6))], [(cur, None)], inits)


STEPS = st.lists(st.tuples(st.sampled_from(["Conv", "Add", "Relu", "Sigmoid", "MaxPool",
                                            "Transpose", "Identity", "Custom"]),
                           st.sampled_from([0, 2, 8])), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, database=None)
@given(STEPS)
def test_random_chains_never_raise_and_dynamic_batch_costs_as_one(steps):
    fixed, dynamic = cm.analyze(chain(steps, 1)), cm.analyze(chain(steps, "N"))
    for report in (fixed, dynamic):
        assert len(report.nodes) == len(steps)
        assert all(n.flops >= 0 and n.bytes >= 0 for n in report.nodes)
        assert report.total_flops == sum(n.flops for n in report.nodes)
        assert report.total_bytes == sum(n.bytes for n in report.nodes)
        customs = sum(op == "Custom" for op, _ in steps)
        assert report.unknown_ops == ({"Blur": customs} if customs else {})
    assert [n.flops for n in dynamic.nodes] == [n.flops for n in fixed.nodes]
    assert [n.bytes for n in dynamic.nodes] == [n.bytes for n in fixed.nodes]
    assert all(n.estimated for n in dynamic.nodes)
    # A custom op's output is guessed and inference reruns: only the nodes touching it guess.
    custom = [op == "Custom" for op, _ in steps]
    assert [n.estimated for n in fixed.nodes] == [
        c or (i > 0 and custom[i - 1]) for i, c in enumerate(custom)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_fully_costed(path):
    m = onnx.load(str(path))
    report = cm.analyze(m)
    assert report.unknown_ops == {} and report.missing_shapes == 0
    assert not any(n.estimated for n in report.nodes)
    assert report.total_flops > 1e6
    # Every initializer is read by at least one node (Constant-made shapes excluded).
    assert sum(n.weight_bytes for n in report.nodes) >= sum(
        numpy_helper.to_array(i).nbytes for i in m.graph.initializer)


# name -> (published GMACs at 224x224 batch 1, or None where no source fits this graph; bounds on
# our total GFLOPs). Totals also hold BN/ReLU/pool/add: 0.1-5 % on top of 2 x MACs here.
REAL = {
    "resnet50": (4.09, 7.9, 8.4),      # torchvision ResNet-50
    "vgg19": (19.63, 38.5, 40.0),      # torchvision VGG-19
    "densenet121": (2.83, 5.5, 6.0),   # torchvision DenseNet-121
    "inception_v1": (1.5, 2.7, 3.2),   # GoogLeNet paper: "1.5 billion multiply-adds"
    "inception_v2": (2.0, 3.8, 4.3),   # BN-Inception, ~2 G multiply-adds
    "squeezenet": (0.35, 0.6, 0.8),    # torchvision SqueezeNet 1.1
    "bvlc_alexnet": (None, 1.2, 1.5),  # Caffe AlexNet (grouped), fed 224 not 227: 54x54 conv1
    "zfnet512": (None, 2.8, 3.2),
    "shufflenet": (None, 0.2, 0.32),   # ShuffleNet v1 (~0.14 G in its paper, variant unknown)
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_cnns_from_onnx_test_data(name):
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not shipped with this onnx")
    report = cm.analyze(onnx.load(str(path)))
    published, lo, hi = REAL[name]
    assert report.unknown_ops == {} and report.missing_shapes == 0
    assert not any(n.estimated for n in report.nodes)
    assert lo * 1e9 <= report.total_flops <= hi * 1e9
    macs = sum(n.flops for n in report.nodes if n.op_type in ("Conv", "Gemm")) / 2
    assert 2 * macs <= report.total_flops <= 1.06 * 2 * macs
    if published is not None:
        assert macs == pytest.approx(published * 1e9, rel=0.06)
    if name == "resnet50":
        assert 7.7e9 <= 2 * macs <= 8.2e9
        weights = sum(n.weight_bytes for n in report.nodes)
        assert 100e6 <= weights <= 104e6  # 25.6 M parameters, fp32, each read once
