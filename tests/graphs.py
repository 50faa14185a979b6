"""Small float32 ONNX graphs, one per kind of structure the slicer must cut correctly.

Every builder returns a `Case`: the model (checked by onnx.checker), how many *compute* nodes it
has (nodes that are not part of a constant subgraph: what the slicer cuts between), and a
deterministic input generator. Weights come from a seeded generator and are scaled by
1/sqrt(fan_in) so activations stay O(1) and relative comparisons are meaningful. Spatial sizes
are small by default so ONNX Runtime runs each graph in well under a millisecond; the builders
take channels/size arguments so balance tests can cost realistic shapes without running them.

Kinds (ALL_KINDS): residual chain (Add skips), inception blocks (parallel branches + Concat),
dense blocks (each layer concatenates all previous features), two inputs / two outputs with one
output made mid-graph, weights from Constant / ConstantOfShape nodes, an IR-3 model whose
initializers are also graph inputs, `If` nodes whose branches read outer-scope tensors (nested
too), and a tiny chain with fewer compute nodes than most requested slice counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32 = TensorProto.FLOAT


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    compute_nodes: int                       # nodes the slicer may cut between
    inputs: Callable[[int], dict]            # seed -> feeds

    def feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        return self.inputs(seed)


class _Builder:
    """Accumulates nodes and weights; every node gets a unique name (measured_us keys)."""

    def __init__(self, seed: int, weights_as: str = "initializer"):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.weights_as = weights_as          # "initializer" | "constant"
        self._n = 0
        self.compute = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def weight(self, array: np.ndarray, stem: str = "w") -> str:
        name = self.fresh(stem)
        if self.weights_as == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                               value=numpy_helper.from_array(array, name)))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def normal(self, *shape: int, scale: float) -> np.ndarray:
        return (scale * self.rng.standard_normal(shape)).astype(np.float32)

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n_{out}", **attrs))
        self.compute += 1
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, out: str | None = None,
             bias: bool = True) -> str:
        w = self.weight(self.normal(cout, cin, k, k, scale=1.0 / np.sqrt(cin * k * k)))
        ins = [x, w] + ([self.weight(self.normal(cout, scale=0.1), "b")] if bias else [])
        return self.op("Conv", ins, out, kernel_shape=[k, k], pads=[k // 2] * 4)

    def relu(self, x: str, out: str | None = None) -> str:
        return self.op("Relu", [x], out)

    def head(self, x: str, channels: int, classes: int, out: str) -> str:
        """GlobalAveragePool -> Flatten -> Gemm: [1, C, h, w] -> [1, classes]."""
        pooled = self.op("GlobalAveragePool", [x])
        flat = self.op("Flatten", [pooled])
        w = self.weight(self.normal(channels, classes, scale=1.0 / np.sqrt(channels)))
        b = self.weight(self.normal(classes, scale=0.1), "b")
        return self.op("Gemm", [flat, w, b], out)

    def model(self, name: str, inputs: list, outputs: list, opset: int = OPSET,
              ir_version: int = IR_VERSION) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="edgesched-tests")
        model.ir_version = ir_version
        onnx.checker.check_model(model, full_check=True)
        return model


def _vi(name: str, shape, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape) if shape is not None else None)


def _normal_inputs(specs: dict[str, tuple]) -> Callable[[int], dict]:
    def make(seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1000 + seed)
        return {n: rng.standard_normal(s).astype(np.float32) for n, s in specs.items()}
    return make


# --- ResNet-style residual chain ------------------------------------------------------------

def residual_chain(blocks: int = 4, channels: int = 8, size: int = 8, seed: int = 1) -> Case:
    """stem Conv+Relu, then `blocks` x [Conv, Relu, Conv, Add(skip), Relu], then a head.

    Between blocks exactly one tensor is live; inside a block the skip is live too (2).
    Compute nodes: 2 + 5 * blocks + 3.
    """
    b = _Builder(seed)
    x = b.relu(b.conv("image", 3, channels), "stem")
    for i in range(blocks):
        y = b.relu(b.conv(x, channels, channels))
        y = b.conv(y, channels, channels)
        x = b.relu(b.op("Add", [y, x]), f"block{i}")
    logits = b.head(x, channels, 10, "logits")
    shape = (1, 3, size, size)
    model = b.model("residual_chain", [_vi("image", shape)], [_vi(logits, (1, 10))])
    return Case("residual", model, b.compute, _normal_inputs({"image": shape}))


# --- Inception-style blocks -----------------------------------------------------------------

def inception(blocks: int = 3, channels: int = 8, size: int = 8, seed: int = 2) -> Case:
    """stem, then `blocks` x four parallel branches joined by Concat, then a head.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; MaxPool 3x3 -> 1x1 (each conv + Relu).
    Each branch has channels // 4 outputs, so the Concat has `channels` again.
    """
    b = _Builder(seed)
    q = channels // 4
    x = b.relu(b.conv("image", 3, channels), "stem")
    for i in range(blocks):
        b1 = b.relu(b.conv(x, channels, q, k=1))
        b2 = b.relu(b.conv(b.relu(b.conv(x, channels, q, k=1)), q, q))
        b3 = b.relu(b.conv(b.relu(b.conv(x, channels, q, k=1)), q, q))
        b3 = b.relu(b.conv(b3, q, q))
        pooled = b.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        b4 = b.relu(b.conv(pooled, channels, q, k=1))
        x = b.op("Concat", [b1, b2, b3, b4], f"mixed{i}", axis=1)
    logits = b.head(x, channels, 10, "logits")
    shape = (1, 3, size, size)
    model = b.model("inception", [_vi("image", shape)], [_vi(logits, (1, 10))])
    return Case("inception", model, b.compute, _normal_inputs({"image": shape}))


# --- DenseNet-style dense blocks ------------------------------------------------------------

def densenet(blocks: int = 2, layers: int = 4, growth: int = 4, channels: int = 8,
             size: int = 8, seed: int = 3) -> Case:
    """stem, then dense blocks: layer k reads Concat(x0, f1, ..., f_{k-1}) (all previous
    features stay live, so cuts inside a block pass several tensors) through
    BatchNormalization -> Relu -> Conv3x3; a transition (Concat all, Conv1x1, AveragePool)
    between blocks; then a head."""
    b = _Builder(seed)
    x = b.relu(b.conv("image", 3, channels), "stem")
    c = channels
    for blk in range(blocks):
        features = [x]
        for _ in range(layers):
            cin = c + growth * (len(features) - 1)
            inp = features[0] if len(features) == 1 else b.op("Concat", features, axis=1)
            bn = b.op("BatchNormalization", [
                inp, b.weight(1.0 + b.normal(cin, scale=0.1), "scale"),
                b.weight(b.normal(cin, scale=0.1), "bias"),
                b.weight(b.normal(cin, scale=0.1), "mean"),
                b.weight((0.5 + b.rng.random(cin)).astype(np.float32), "var")])
            features.append(b.conv(b.relu(bn), cin, growth))
        cin = c + growth * layers
        x = b.conv(b.op("Concat", features, axis=1), cin, channels, k=1)
        if blk < blocks - 1:
            x = b.op("AveragePool", [x], f"transition{blk}", kernel_shape=[2, 2],
                     strides=[2, 2])
    logits = b.head(x, channels, 10, "logits")
    shape = (1, 3, size, size)
    model = b.model("densenet", [_vi("image", shape)], [_vi(logits, (1, 10))])
    return Case("densenet", model, b.compute, _normal_inputs({"image": shape}))


# --- two inputs, two outputs, one output made early -----------------------------------------

def two_io(depth: int = 4, channels: int = 8, size: int = 8, seed: int = 4) -> Case:
    """image[1,3,s,s] and meta[1,6] in; `early` (a mid-graph output that later nodes also
    read) and `final` out. `meta` is read only by the last nodes, so it must reach a late
    slice as a graph input."""
    b = _Builder(seed)
    x = b.relu(b.conv("image", 3, channels))
    early = b.op("Flatten", [b.op("GlobalAveragePool", [x])], "early")     # [1, C]
    for _ in range(depth):
        x = b.relu(b.conv(x, channels, channels))
    trunk = b.head(x, channels, 5, "trunk")                                # [1, 5]
    w_meta = b.weight(b.normal(6, 5, scale=0.4))
    w_early = b.weight(b.normal(channels, 5, scale=0.3))
    side = b.op("Add", [b.op("MatMul", ["meta", w_meta]), b.op("MatMul", [early, w_early])])
    final = b.op("Add", [trunk, side], "final")
    shapes = {"image": (1, 3, size, size), "meta": (1, 6)}
    model = b.model("two_io", [_vi(n, s) for n, s in shapes.items()],
                    [_vi(early, (1, channels)), _vi(final, (1, 5))])
    return Case("two_io", model, b.compute, _normal_inputs(shapes))


# --- weights made by Constant and ConstantOfShape nodes -------------------------------------

def constant_weights(depth: int = 6, channels: int = 8, size: int = 8, seed: int = 5) -> Case:
    """Conv weights from Constant nodes, biases from ConstantOfShape(shape initializer) (how
    the onnx "light" models store every weight), a per-channel scale made by a constant
    subgraph (Constant -> Unsqueeze(axes Constant) -> Mul by a ConstantOfShape), one Constant
    read by every layer (each slice needs its own copy), and a Reshape whose target shape is a
    Constant."""
    b = _Builder(seed, weights_as="constant")
    shape_init = numpy_helper.from_array(np.array([channels], dtype=np.int64), "bias_shape")
    b.inits.append(shape_init)

    def constant_of_shape(value: float) -> str:
        out = b.fresh("cos")
        b.nodes.append(helper.make_node(
            "ConstantOfShape", ["bias_shape"], [out], name=f"n_{out}",
            value=numpy_helper.from_array(np.array([value], dtype=np.float32), "v")))
        return out

    # shared per-channel scale [C,1,1]: Unsqueeze(Constant[C] * ConstantOfShape(0.5), axes)
    raw = b.weight((1.0 + 0.2 * b.rng.standard_normal(channels)).astype(np.float32), "scale")
    half = constant_of_shape(0.5)
    product = b.fresh("scaled")
    b.nodes.append(helper.make_node("Mul", [raw, half], [product], name=f"n_{product}"))
    axes = b.weight(np.array([1, 2], dtype=np.int64), "axes")
    scale = b.fresh("scale3d")
    b.nodes.append(helper.make_node("Unsqueeze", [product, axes], [scale], name=f"n_{scale}"))

    x = "image"
    cin = 3
    for i in range(depth):
        w = b.weight(b.normal(channels, cin, 3, 3, scale=1.0 / np.sqrt(cin * 9)))
        conv = b.op("Conv", [x, w, constant_of_shape(0.01 * (i + 1))], kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1])
        x = b.relu(b.op("Mul", [conv, scale]))
        cin = channels
    target = b.weight(np.array([1, -1], dtype=np.int64), "target")
    flat = b.op("Reshape", [b.op("GlobalAveragePool", [x]), target])
    w = b.weight(b.normal(channels, 4, scale=1.0 / np.sqrt(channels)))
    logits = b.op("MatMul", [flat, w], "logits")
    shape = (1, 3, size, size)
    model = b.model("constant_weights", [_vi("image", shape)], [_vi(logits, (1, 4))])
    return Case("constant", model, b.compute, _normal_inputs({"image": shape}))


# --- IR 3: initializers listed in graph.input -----------------------------------------------

def ir3(blocks: int = 3, channels: int = 8, size: int = 8, seed: int = 6) -> Case:
    """A residual chain as an IR-3 / opset-9 model (like the onnx "light" models): every
    initializer is also declared in graph.input, and some weights come from
    ConstantOfShape(shape initializer)."""
    b = _Builder(seed)
    x = b.relu(b.conv("image", 3, channels), "stem")
    for i in range(blocks):
        shape_name = b.weight(np.array([channels], dtype=np.int64), "shape")
        bias = b.fresh("cos_bias")
        b.nodes.append(helper.make_node(
            "ConstantOfShape", [shape_name], [bias], name=f"n_{bias}",
            value=numpy_helper.from_array(np.array([0.05], dtype=np.float32), "v")))
        w = b.weight(b.normal(channels, channels, 3, 3, scale=1.0 / np.sqrt(channels * 9)))
        y = b.relu(b.op("Conv", [x, w, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        y = b.conv(y, channels, channels)
        x = b.relu(b.op("Add", [y, x]), f"block{i}")
    logits = b.head(x, channels, 10, "logits")
    shape = (1, 3, size, size)
    inputs = [_vi("image", shape)] + [_vi(t.name, t.dims, t.data_type) for t in b.inits]
    model = b.model("ir3", inputs, [_vi(logits, (1, 10))], opset=9, ir_version=3)
    return Case("ir3", model, b.compute, _normal_inputs({"image": shape}))


# --- If nodes whose branches read outer-scope tensors ---------------------------------------

def if_graph(cond_from: str = "input", channels: int = 4, size: int = 6, seed: int = 7) -> Case:
    """Two `If` nodes. The first reads its cond only; both branches compute from outer-scope
    `h0` and `h1` (h0 is made two nodes earlier, so a cut between them must still carry it).
    The second If's then-branch holds a nested If reading `h0` from two scopes up.

    cond_from="input": `flag` (bool[]) is a graph input; "constant": a Constant node.
    """
    b = _Builder(seed)
    shape = (1, channels, size, size)
    h0 = b.relu(b.conv("image", 3, channels), "h0")
    h1 = b.relu(b.conv(h0, channels, channels), "h1")
    if cond_from == "constant":
        cond = "flag_const"
        b.nodes.append(helper.make_node("Constant", [], [cond], name="n_flag_const",
                                        value=helper.make_tensor("c", TensorProto.BOOL, [],
                                                                 [True])))
    else:
        cond = "flag"

    def branch(name: str, nodes: list, out: str) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [_vi(out, shape)])

    then1 = branch("then1", [helper.make_node("Add", [h1, h0], ["t1"], name="then1_add")], "t1")
    else1 = branch("else1", [helper.make_node("Sub", [h1, h0], ["e1_sub"], name="else1_sub"),
                             helper.make_node("Sigmoid", ["e1_sub"], ["e1"], name="else1_sig")],
                   "e1")
    y1 = b.op("If", [cond], "y1", then_branch=then1, else_branch=else1)
    h2 = b.relu(b.conv(y1, channels, channels), "h2")
    h3 = b.relu(b.conv(h2, channels, channels), "h3")
    inner_then = branch("inner_then", [helper.make_node("Mul", [h3, h0], ["it"],
                                                        name="inner_then_mul")], "it")
    inner_else = branch("inner_else", [helper.make_node("Add", [h3, h0], ["ie"],
                                                        name="inner_else_add")], "ie")
    then2 = branch("then2", [
        helper.make_node("Not", [cond], ["not_cond"], name="then2_not"),
        helper.make_node("If", ["not_cond"], ["t2_inner"], name="then2_if",
                         then_branch=inner_then, else_branch=inner_else),
        helper.make_node("Add", ["t2_inner", h2], ["t2"], name="then2_add")], "t2")
    else2 = branch("else2", [helper.make_node("Mul", [h3, h1], ["e2"], name="else2_mul")], "e2")
    y2 = b.op("If", [cond], "y2", then_branch=then2, else_branch=else2)
    h4 = b.relu(b.conv(y2, channels, channels), "h4")
    logits = b.head(h4, channels, 3, "logits")
    inputs = [_vi("image", (1, 3, size, size))]
    if cond_from == "input":
        inputs.append(_vi("flag", (), TensorProto.BOOL))
    model = b.model(f"if_{cond_from}", inputs, [_vi(logits, (1, 3))])
    image = _normal_inputs({"image": (1, 3, size, size)})

    def feeds(seed: int) -> dict[str, np.ndarray]:
        out = image(seed)
        if cond_from == "input":
            out["flag"] = np.array(seed % 2 == 0)
        return out
    return Case(f"if_{cond_from}", model, b.compute, feeds)


# --- fewer compute nodes than slices --------------------------------------------------------

def tiny(seed: int = 8) -> Case:
    """Conv -> Relu -> Conv -> Relu: 4 compute nodes (asking for 5..8 slices must give 4)."""
    b = _Builder(seed)
    y = b.relu(b.conv(b.relu(b.conv("image", 3, 4)), 4, 4), "out")
    shape = (1, 3, 6, 6)
    model = b.model("tiny", [_vi("image", shape)], [_vi(y, (1, 4, 6, 6))])
    return Case("tiny", model, b.compute, _normal_inputs({"image": shape}))


# --- one node dominating the cost -----------------------------------------------------------

def dominated(cheap: int = 6, seed: int = 9) -> Case:
    """A chain of `cheap` Tanh nodes around one big MatMul ([256,1024] x [1024,1024]), which
    is about half of the model's estimated cost."""
    b = _Builder(seed)
    x = "x"
    for _ in range(cheap // 2):
        x = b.op("Tanh", [x])
    x = b.op("MatMul", [x, b.weight(b.normal(1024, 1024, scale=1 / 32))], "big_matmul")
    for i in range(cheap - cheap // 2):
        x = b.op("Tanh", [x], "y" if i == cheap - cheap // 2 - 1 else None)
    shape = (256, 1024)
    model = b.model("dominated", [_vi("x", shape)], [_vi(x, shape)])
    return Case("dominated", model, b.compute, _normal_inputs({"x": shape}))


ALL_KINDS: dict[str, Callable[[], Case]] = {
    "residual": residual_chain,
    "inception": inception,
    "densenet": densenet,
    "two_io": two_io,
    "constant": constant_weights,
    "ir3": ir3,
    "if_input": lambda: if_graph("input"),
    "if_constant": lambda: if_graph("constant"),
    "tiny": tiny,
}
