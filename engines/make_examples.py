"""Generate the example ONNX models committed under engines/examples/.

Three small networks with deterministic random weights, each covering a
structure the backends must handle: residual convolutions with BatchNorm
(convnet), a transformer encoder (attention), and depthwise/grouped
convolutions with a branch joined by Concat (depthwise).

    python engines/make_examples.py [--out DIR]

The output is byte-reproducible; tests/unit/test_example_models.py checks that
the committed files match what this script produces.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Pinned below the onnx default so TensorRT 8.6 (JetPack 5) and older ONNX Runtime load the files.
IR_VERSION = 8
PRODUCER = "edgesched-examples"
SEED = 2024
DEFAULT_OUT = Path(__file__).resolve().parent / "examples"


class GraphBuilder:
    """Collects nodes and initializers. A node's output tensor has the node's name."""

    def __init__(self, seed: int = SEED):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._scalars: dict[str, float] = {}

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r}")
        self._names.add(name)
        return name

    def const(self, name: str, value, dtype=np.float32) -> str:
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, self._claim(name)))
        return name

    def scalar(self, name: str, value: float) -> str:
        """A float scalar shared by every node that asks for it by name."""
        if name not in self._scalars:
            self._scalars[name] = value
            self.const(name, value)
        assert self._scalars[name] == value, name
        return name

    def normal(self, name: str, shape, std: float, mean: float = 0.0) -> str:
        return self.const(name, mean + std * self.rng.standard_normal(shape))

    def he_normal(self, name: str, shape, fan_in: int) -> str:
        return self.normal(name, shape, np.sqrt(2.0 / fan_in))

    def op(self, op_type: str, name: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = self._claim(output) if output else name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._claim(name), **attrs))
        return out

    def model(self, name: str, doc: str, inputs, outputs) -> onnx.ModelProto:
        def info(pairs):
            return [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in pairs]

        graph = helper.make_graph(
            self.nodes, name, info(inputs), info(outputs), initializer=self.initializers, doc_string=doc
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER,
        )


def conv_bn(b: GraphBuilder, name, x, cin, cout, k, stride=1, relu=True, gamma=1.0) -> str:
    w = b.he_normal(f"{name}.weight", (cout, cin, k, k), cin * k * k)
    y = b.op("Conv", name, [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    bn = f"{name}.bn"
    params = [
        b.normal(f"{bn}.scale", (cout,), 0.1 * gamma, mean=gamma),
        b.normal(f"{bn}.bias", (cout,), 0.1),
        b.normal(f"{bn}.mean", (cout,), 0.1),
        b.const(f"{bn}.var", 1.0 + 0.1 * np.abs(b.rng.standard_normal(cout))),
    ]
    y = b.op("BatchNormalization", bn, [y, *params], epsilon=1e-5)
    return b.op("Relu", f"{name}.relu", [y]) if relu else y


def basic_block(b: GraphBuilder, name, x, cin, cout, stride) -> str:
    y = conv_bn(b, f"{name}.conv1", x, cin, cout, 3, stride)
    # Small last-BN scale (cf. zero-init residual) keeps the residual sum from growing block by block.
    y = conv_bn(b, f"{name}.conv2", y, cout, cout, 3, relu=False, gamma=0.25)
    if stride != 1 or cin != cout:
        x = conv_bn(b, f"{name}.downsample", x, cin, cout, 1, stride, relu=False)
    y = b.op("Add", f"{name}.add", [y, x])
    return b.op("Relu", f"{name}.relu", [y])


def gemm_head(b: GraphBuilder, x, cin, cout, output) -> str:
    x = b.op("GlobalAveragePool", "head.pool", [x])
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    w = b.normal("head.fc.weight", (cout, cin), np.sqrt(1.0 / cin))
    bias = b.normal("head.fc.bias", (cout,), 0.01)
    return b.op("Gemm", "head.fc", [x, w, bias], output=output, transB=1)


def build_convnet() -> onnx.ModelProto:
    b = GraphBuilder()
    x = conv_bn(b, "stem.conv", "image", 3, 16, 3)
    x = b.op("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 48x48
    cin = 16
    for s, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        for i in (1, 2):
            x = basic_block(b, f"stage{s}.block{i}", x, cin, cout, stride if i == 1 else 1)
            cin = cout
    gemm_head(b, x, cin, 10, output="logits")
    return b.model(
        "convnet",
        "ResNet-style camera classifier: 3 stages x 2 basic blocks (16/32/64 ch), 10 classes.",
        [("image", (1, 3, 96, 96))],
        [("logits", (1, 10))],
    )


def layer_norm(b: GraphBuilder, name, x, dim) -> str:
    gamma = b.normal(f"{name}.weight", (dim,), 0.05, mean=1.0)
    beta = b.normal(f"{name}.bias", (dim,), 0.02)
    return b.op("LayerNormalization", name, [x, gamma, beta], axis=-1, epsilon=1e-5)


def linear(b: GraphBuilder, name, x, din, dout) -> str:
    w = b.normal(f"{name}.weight", (din, dout), np.sqrt(1.0 / din))
    y = b.op("MatMul", f"{name}.matmul", [x, w])
    return b.op("Add", f"{name}.add", [y, b.normal(f"{name}.bias", (dout,), 0.02)])


def attention(b: GraphBuilder, name, x, seq, dim, heads) -> str:
    head_dim = dim // heads
    split_shape = b.const(f"{name}.split_shape", [1, seq, heads, head_dim], np.int64)
    merge_shape = b.const(f"{name}.merge_shape", [1, seq, dim], np.int64)

    def to_heads(tag, perm):
        t = linear(b, f"{name}.{tag}_proj", x, dim, dim)
        t = b.op("Reshape", f"{name}.{tag}_reshape", [t, split_shape])
        return b.op("Transpose", f"{name}.{tag}_transpose", [t], perm=perm)

    q = to_heads("q", [0, 2, 1, 3])  # [1, heads, seq, head_dim]
    k = to_heads("k", [0, 2, 3, 1])  # [1, heads, head_dim, seq], pre-transposed for Q @ K^T
    v = to_heads("v", [0, 2, 1, 3])
    s = b.op("MatMul", f"{name}.scores", [q, k])
    s = b.op("Mul", f"{name}.scale", [s, b.const(f"{name}.scale_factor", 1.0 / np.sqrt(head_dim))])
    p = b.op("Softmax", f"{name}.softmax", [s], axis=-1)
    c = b.op("MatMul", f"{name}.context", [p, v])
    c = b.op("Transpose", f"{name}.merge_transpose", [c], perm=[0, 2, 1, 3])
    c = b.op("Reshape", f"{name}.merge_reshape", [c, merge_shape])
    return linear(b, f"{name}.out_proj", c, dim, dim)


def gelu(b: GraphBuilder, name, x) -> str:
    # Exact erf GELU (the Gelu op needs opset 20), in the order PyTorch exports it so
    # ORT's and TensorRT's GELU fusions recognise the pattern.
    t = b.op("Div", f"{name}.div", [x, b.scalar("const.sqrt2", float(np.sqrt(2.0)))])
    t = b.op("Erf", f"{name}.erf", [t])
    t = b.op("Add", f"{name}.add_one", [t, b.scalar("const.one", 1.0)])
    t = b.op("Mul", f"{name}.mul_x", [x, t])
    return b.op("Mul", f"{name}.mul_half", [t, b.scalar("const.half", 0.5)])


def encoder_block(b: GraphBuilder, name, x, seq, dim, heads, hidden, output=None) -> str:
    h = layer_norm(b, f"{name}.ln1", x, dim)
    h = attention(b, f"{name}.attn", h, seq, dim, heads)
    x = b.op("Add", f"{name}.residual1", [x, h])
    h = layer_norm(b, f"{name}.ln2", x, dim)
    h = linear(b, f"{name}.mlp.fc1", h, dim, hidden)
    h = gelu(b, f"{name}.mlp.gelu", h)
    h = linear(b, f"{name}.mlp.fc2", h, hidden, dim)
    return b.op("Add", f"{name}.residual2", [x, h], output=output)


def build_attention() -> onnx.ModelProto:
    b = GraphBuilder()
    seq, dim = 32, 64
    x = encoder_block(b, "block1", "tokens", seq, dim, heads=4, hidden=256)
    encoder_block(b, "block2", x, seq, dim, heads=4, hidden=256, output="features")
    return b.model(
        "attention",
        "Two pre-LayerNorm transformer encoder blocks: 4-head self-attention, MLP 64-256-64 with erf GELU.",
        [("tokens", (1, seq, dim))],
        [("features", (1, seq, dim))],
    )


def conv_relu6(b: GraphBuilder, name, x, cin, cout, k, stride=1, group=1) -> str:
    fan_in = cin // group * k * k
    w = b.he_normal(f"{name}.weight", (cout, cin // group, k, k), fan_in)
    bias = b.normal(f"{name}.bias", (cout,), 0.01)
    y = b.op("Conv", name, [x, w, bias], kernel_shape=[k, k], strides=[stride, stride],
             pads=[k // 2] * 4, group=group)
    return b.op("Clip", f"{name}.relu6", [y, b.scalar("relu6.min", 0.0), b.scalar("relu6.max", 6.0)])


def separable(b: GraphBuilder, name, x, cin, cout, stride=1) -> str:
    x = conv_relu6(b, f"{name}.dw", x, cin, cin, 3, stride, group=cin)
    return conv_relu6(b, f"{name}.pw", x, cin, cout, 1)


def build_depthwise() -> onnx.ModelProto:
    b = GraphBuilder()
    x = conv_relu6(b, "stem.conv", "image", 3, 16, 3, stride=2)  # 64x64
    cin = 16
    for i, (cout, stride) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2), (128, 1)], start=1):
        x = separable(b, f"block{i}", x, cin, cout, stride)
        cin = cout
    # Inception-style split: the same 16x16 feature map feeds two branches joined on channels.
    left = conv_relu6(b, "mixed.branch1x1", x, cin, 64, 1)
    right = separable(b, "mixed.branch3x3", x, cin, 64)
    x = b.op("Concat", "mixed.concat", [left, right], axis=1)
    x = separable(b, "block6", x, 128, 256, stride=2)  # 8x8
    gemm_head(b, x, 256, 100, output="scores")
    return b.model(
        "depthwise",
        "MobileNet-style net: depthwise-separable blocks with ReLU6, a two-branch Concat block, "
        "100 classes.",
        [("image", (1, 3, 128, 128))],
        [("scores", (1, 100))],
    )


MODELS = {
    "convnet.onnx": build_convnet,
    "attention.onnx": build_attention,
    "depthwise.onnx": build_depthwise,
}


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    """Shape of every node output after strict shape inference; None where not fully static."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    shapes: dict[str, list[int] | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else None
        static = dims is not None and all(d.HasField("dim_value") for d in dims)
        shapes[vi.name] = [d.dim_value for d in dims] if static else None
    return {out: shapes.get(out) for node in model.graph.node for out in node.output}


def validate(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    missing = [name for name, shape in inferred_shapes(model).items() if shape is None]
    if missing:
        raise ValueError(f"{model.graph.name}: no static shape for {missing}")


SLICED = {"convnet.onnx": 3}     # file -> slices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, build in MODELS.items():
        model = build()
        validate(model)
        data = model.SerializeToString(deterministic=True)
        (args.out / filename).write_bytes(data)
        print(f"{filename}: {len(data) / 1024:.1f} KB, {len(model.graph.node)} nodes")
    # The camera classifier also ships cut into slices, as `edgesched build` writes them, so
    # the default config and the demo schedule a multi-slice model out of the box.
    for filename, parts in SLICED.items():
        from edgesched.modelfiles.slicing import slice_model
        source = args.out / filename
        out = args.out / f"{source.stem}_sliced"
        manifest, plan = slice_model(source, parts, out, name=source.stem)
        print(f"{out.name}/: {len(manifest.slices)} slices, balance {plan.balance:.2f}")


if __name__ == "__main__":
    main()
