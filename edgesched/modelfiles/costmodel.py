"""Per-node cost of an ONNX graph: FLOPs and bytes moved, from shapes inferred by onnx.

Used by slicing.py (balance slices, pick cuts) and by the simulated GPU (roofline time per
slice). Counts are for one run of the graph as given (its batch size). Conventions:
- FLOPs: a multiply-add is 2; transcendental ops cost a few FLOPs per element (table below).
- Bytes: every tensor a node reads or writes, once per node (a weight read by two nodes counts
  twice; no caches: an upper bound on DRAM traffic, which is what a roofline wants).
- Weights: initializers, Constant outputs, and outputs of nodes whose inputs are all weights
  (TensorRT and ONNX Runtime fold those at build time, so such nodes cost 0 themselves).
- Input shapes: with `shapes` (input name -> edgesched.shapes.ShapeRange) the graph is costed
  at each input's `opt` shape, set on the inputs before shape inference, so every dim that
  follows from them (batch, height, sequence...) is concrete; a dynamic input missing from
  `shapes` is a ShapeError. Without `shapes` (tolerant callers: reports, tests) dynamic dims
  count as 1 and make their nodes `estimated`: build, simulate, predict and calibrate always
  pass shapes (edgesched.shapes.resolve first, which names the model and the option).
- An untyped output (custom op) is guessed shaped like the node's largest input; that makes
  the node `estimated`, as do ops with no formula (a per-element guess).
Imports only onnx (no runtime), so it runs wherever slicing runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import onnx
from onnx import helper

from edgesched.shapes import ShapeError, ShapeRange

Shape = tuple  # tuple[int | None, ...]; None is a dynamic or unknown dim


@dataclass(frozen=True)
class NodeCost:
    index: int            # position in graph.node
    name: str             # node name, or f"{op_type}_{index}" when empty
    op_type: str
    flops: float          # floating-point ops, multiply-add = 2
    weight_bytes: int     # initializers / constants this node reads
    input_bytes: int      # non-constant activations it reads
    output_bytes: int     # what it writes
    estimated: bool       # unknown op, dynamic dim or missing shape: a conservative guess

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class CostReport:
    nodes: tuple[NodeCost, ...]
    unknown_ops: dict[str, int]   # op_type -> nodes costed by the fallback (no formula for the op)
    missing_shapes: int           # nodes touching a tensor whose shape inference could not give
    total_flops: float
    total_bytes: int


class _Missing(Exception):  # a formula needs a shape that inference did not give
    pass


class _Node:
    """What a cost function sees: one node, its tensors' shapes, and a flag for guesses."""

    def __init__(self, node: onnx.NodeProto, types: dict[str, tuple[Shape | None, int]]):
        self.node, self.guessed = node, False
        self.ins = [types.get(t, (None,))[0] for t in node.input]
        self.outs = [types.get(t, (None,))[0] for t in node.output]

    def attr(self, name: str, default=None):
        return next((helper.get_attribute_value(a) for a in self.node.attribute
                     if a.name == name), default)

    def numel(self, shape) -> int:
        if shape is None:
            raise _Missing
        self.guessed |= None in shape
        return math.prod(_ones(shape))

    def has(self, i: int) -> bool:
        return 0 <= i < len(self.node.input) and bool(self.node.input[i])

    def out_elems(self) -> int:
        """Elements of output 0, else of the largest input (a shape-preserving guess)."""
        if self.outs and self.outs[0] is not None:
            return self.numel(self.outs[0])
        known = [self.numel(s) for s in self.ins if s is not None]
        if not known:
            raise _Missing
        self.guessed = True
        return max(known)


# Formulas may index a missing (None) shape: _flops catches that and falls back to a guess.
def _conv(w_at: int, bias_at: int) -> Callable[[_Node], float]:
    # W is (C_out, C_in/group, k1, k2, ...): each output element is C_in/group * prod(k) MACs,
    # which covers grouped and depthwise convs without reading `group`. Bias: one add each.
    def cost(n: _Node) -> float:
        out = n.out_elems()
        return 2.0 * out * n.numel(n.ins[w_at][1:]) + (out if n.has(bias_at) else 0)
    return cost


def _conv_transpose(n: _Node) -> float:
    # W is (C_in, C_out/group, k...): each input element scatters into C_out/group * prod(k).
    macs = n.numel(n.ins[0]) * n.numel(n.ins[1][1:])
    return 2.0 * macs + (n.out_elems() if n.has(2) else 0)


def _gemm(n: _Node) -> float:
    (a, b), trans_a = n.ins[:2], n.attr("transA", 0)
    mn = n.numel((a[1 if trans_a else 0], b[0 if n.attr("transB", 0) else 1]))
    return 2.0 * mn * n.numel((a[0 if trans_a else 1],)) + (mn if n.has(2) else 0)


def _matmul(n: _Node) -> float:
    # Output (..., M, N) already has the broadcast batch dims; K = A[-1] (also for 1-D A).
    return 2.0 * n.numel(n.outs[0]) * n.numel(n.ins[0][-1:])


def _einsum(n: _Node) -> float:
    # One multiply(-add) per point of the full index space; '...' counts as the largest batch.
    terms = n.attr("equation", b"").decode().replace(" ", "").split("->")[0].split(",")
    sizes, batch = {}, 1
    for term, shape in zip(terms, n.ins):
        pre, _, post = term.partition("...")
        batch = max(batch, n.numel(shape[len(pre):len(shape) - len(post)]))
        sizes.update({**dict(zip(pre, shape)), **dict(zip(post, shape[len(shape) - len(post):]))})
    return (2.0 if len(terms) > 1 else 1.0) * batch * n.numel(tuple(sizes.values()))


def _rnn(gates: int) -> Callable[[_Node], float]:
    # Per step and direction: gates x H x (I + H) MACs, and ~4 elementwise ops per gate unit.
    def cost(n: _Node) -> float:
        x, hidden = n.ins[0], n.attr("hidden_size")
        dirs = 2 if n.attr("direction", b"forward") == b"bidirectional" else 1
        return dirs * n.numel(x[:2]) * gates * hidden * (2.0 * (n.numel(x[2:]) + hidden) + 4)
    return cost


def _resize(n: _Node) -> float:
    # Per output element: nearest = 1 (index math); linear = 2^r taps and cubic = 4^r, one
    # multiply-add each, where r = the number of resized axes.
    mode, x, y = n.attr("mode", b"nearest").decode(), n.ins[0], n.outs[0]
    axes = sum(a != b for a, b in zip(x, y)) if x and y and len(x) == len(y) else 2
    taps = 1 if mode == "nearest" else 2 * (4 if mode == "cubic" else 2) ** max(axes, 1)
    return float(taps * n.out_elems())


# FLOPs per output element. Cheap ALU ops 1; transcendentals a few (an SFU instruction plus
# range reduction and the arithmetic around it), in line with common FLOP counters.
_ELEMENTWISE = {
    **dict.fromkeys(
        "Add Sub Mul Div Neg Abs Relu Sign Floor Ceil Round Reciprocal Not And Or Xor Equal "
        "Less LessOrEqual Greater GreaterOrEqual Where IsNaN IsInf ThresholdedRelu BitShift "
        "BitwiseAnd BitwiseOr BitwiseXor BitwiseNot Trilu Range NonZero".split(), 1),
    **dict.fromkeys("LeakyRelu PRelu Clip Shrink Mod Sqrt DequantizeLinear".split(), 2),
    **dict.fromkeys("HardSigmoid Softsign QuantizeLinear".split(), 3),
    **dict.fromkeys("HardSwish Exp Log Sigmoid Softplus Elu Pow Sin Cos Tan Asin Acos Atan "
                    "Sinh Cosh Asinh Acosh Atanh".split(), 4),
    **dict.fromkeys("Tanh Selu Celu Erf".split(), 5),
    **dict.fromkeys("Gelu Mish".split(), 8),
    # BatchNorm at inference is a folded scale+shift: one FMA = 2 (TensorRT usually folds it
    # into the Conv). Layer/Instance/Group norm: sum, subtract, square-accumulate (2), times
    # rstd, scale, bias = 7. Softmax: max, subtract, exp, sum, divide = 5.
    "BatchNormalization": 2, "LayerNormalization": 7, "InstanceNormalization": 7,
    "GroupNormalization": 7, "MeanVarianceNormalization": 7, "RMSNormalization": 5,
    "LpNormalization": 3, "Softmax": 5, "LogSoftmax": 5, "Hardmax": 1, "GridSample": 8,
}
_REDUCE = {  # FLOPs per *input* element
    **dict.fromkeys("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 "
                    "GlobalAveragePool GlobalMaxPool ArgMax ArgMin CumSum".split(), 1),
    **dict.fromkeys("ReduceSumSquare ReduceL2 GlobalLpPool".split(), 2),
    "TopK": 2,  # a partial sort: ~log2(k) compares per element, k small in practice
    "ReduceLogSum": 5, "ReduceLogSumExp": 5}
# Data movement: 0 FLOPs, bytes counted like any node's (reads + writes). Transpose, Cast,
# Concat, Pad really copy. Views (Reshape & co, Identity, Dropout) are counted as copies too,
# input + output: the runtime may materialize them (a TensorRT shuffle layer, ORT when it
# cannot alias), and over-costing a small op is harmless to balancing while "free" is not.
_MOVES = ("Reshape Flatten Squeeze Unsqueeze Identity Dropout Transpose Cast CastLike Concat "
          "Split Slice Gather GatherElements GatherND ScatterND ScatterElements Scatter Tile "
          "Expand Pad DepthToSpace SpaceToDepth Shape Size Constant ConstantOfShape EyeLike "
          "OneHot Compress ReverseSequence MaxUnpool").split()
_READS_OUTPUT_SIZE = {"Gather", "GatherElements", "GatherND", "Slice"}  # read ~what they write
_READS_METADATA = {"Shape", "Size"}  # read no tensor data at all

COST: dict[str, Callable[[_Node], float]] = {
    **{op: (lambda n, k=k: k * n.out_elems()) for op, k in _ELEMENTWISE.items()},
    **{op: (lambda n, k=k: k * n.numel(n.ins[0])) for op, k in _REDUCE.items()},
    **{op: (lambda n: 0.0) for op in _MOVES},
    "Conv": _conv(1, 2), "ConvInteger": _conv(1, -1), "QLinearConv": _conv(3, 8),
    "ConvTranspose": _conv_transpose, "Gemm": _gemm, "Einsum": _einsum,
    "MatMul": _matmul, "MatMulInteger": _matmul, "QLinearMatMul": _matmul,
    "RNN": _rnn(1), "GRU": _rnn(3), "LSTM": _rnn(4), "Resize": _resize, "Upsample": _resize,
    # Pools: kernel taps per output element (LpPool: power + add).
    **{op: (lambda n, k=k: k * n.out_elems() * math.prod(n.attr("kernel_shape") or [1]))
       for op, k in (("MaxPool", 1), ("AveragePool", 1), ("LpPool", 2))},
    # Variadic: n inputs take n - 1 ops per element; Mean adds the divide.
    **{op: (lambda n, k=k: max(1, len(n.node.input) - 1 + k) * n.out_elems())
       for op, k in (("Sum", 0), ("Max", 0), ("Min", 0), ("Mean", 1))},
    # LRN: window sum of squares (2 * size), scale and bias (2), pow (4), divide (1).
    "LRN": lambda n: (2.0 * n.attr("size", 1) + 7) * n.out_elems(),
}
_FALLBACK_FLOPS_PER_ELEMENT = 4.0  # unknown ops: a few FLOPs per element, like a transcendental
_NOT_FOLDABLE = {"If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
                 "RandomUniformLike", "Multinomial", "Bernoulli"}
_SMALL_INITIALIZER = 4096  # elements; bigger ones are weights, never read by shape inference
_GUESS_ROUNDS = 16         # inference reruns after guessing outputs of ops it does not know
_SUB_BYTE_BITS = {getattr(onnx.TensorProto, t, -1): b for t, b in (  # getattr: older onnx
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
    ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))}


def _bits(elem_type: int) -> int | None:
    """Bits per element (packed for sub-byte types); None for strings and undefined types."""
    if elem_type in _SUB_BYTE_BITS or elem_type == onnx.TensorProto.STRING:
        return _SUB_BYTE_BITS.get(elem_type)
    try:
        return 8 * helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _ones(shape: Shape) -> Shape:
    return tuple(1 if d is None else d for d in shape)


def _bytes(shape: Shape | None, elem_type: int, default_bits: int | None = None) -> int | None:
    bits = _bits(elem_type) or default_bits
    if shape is None or bits is None or None in shape:
        return None
    return (math.prod(shape) * bits + 7) // 8


def _types(model: onnx.ModelProto) -> dict[str, tuple[Shape | None, int]]:
    """name -> (shape, or None when even the rank is unknown; ONNX element type)."""
    g, out = model.graph, {}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            shape = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                     if tt.HasField("shape") else None)
            out[vi.name] = (shape, tt.elem_type)
    for init in g.initializer:  # initializers win: their shape is exact (also IR<4 inputs)
        out[init.name] = (tuple(init.dims), init.data_type)
    return out


def _light(model: onnx.ModelProto,
           shapes: Mapping[str, ShapeRange] | None = None) -> onnx.ModelProto:
    """A copy for shape inference, its big initializers turned into typed graph inputs, its
    inputs set to their `opt` shapes when `shapes` is given (_concrete).

    Inference serializes the model: weights would dominate its time (~0.3 s for ResNet-50) and
    break it past 2 GB. Small initializers stay: data propagation reads them (Reshape targets).
    IR >= 4 because IR-3 inference ignores initializers that are not also graph inputs."""
    g, listed = model.graph, {i.name for i in model.graph.input}
    small = [i for i in g.initializer if math.prod(i.dims) <= _SMALL_INITIALIZER]
    hidden = [helper.make_tensor_value_info(i.name, i.data_type, i.dims) for i in g.initializer
              if math.prod(i.dims) > _SMALL_INITIALIZER and i.name not in listed]
    graph = onnx.GraphProto(name=g.name, node=g.node, input=[*g.input, *hidden], output=g.output,
                            value_info=g.value_info, initializer=small)
    if shapes is not None:
        _concrete(graph, {i.name for i in g.initializer}, shapes)
    return onnx.ModelProto(ir_version=max(model.ir_version, 4), opset_import=model.opset_import,
                           functions=model.functions, graph=graph)


def _concrete(graph: onnx.GraphProto, weights: set[str],
              shapes: Mapping[str, ShapeRange]) -> None:
    """Set every activation input of `graph` (a copy) to its `opt` shape. Where that changes
    a declared shape, also forget the shapes recorded for all other tensors: inference keeps a
    declared shape over the one it infers (an output exported as [1, 1000] stays so at batch
    4), so they are inferred afresh; their element types stay (what types a custom op's
    outputs). A static model at its declared shapes keeps them all (a custom op's too)."""
    changed = False
    for vi in graph.input:
        if vi.name in weights or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in tt.shape.dim] if tt.HasField("shape") else None
        given = shapes.get(vi.name)
        if given is None:
            if declared is None or None in declared:
                raise ShapeError(f"graph {graph.name or 'model'!r}: input {vi.name!r} has "
                                 "dynamic dimensions and no shape was given for it")
            continue
        if declared is not None and not given.fits(declared):
            raise ShapeError(f"graph {graph.name or 'model'!r}: input {vi.name!r} is declared "
                             f"with {len(declared)} dims, which shape {given} does not fit")
        if declared == list(given.opt):
            continue
        changed = True
        tt.shape.ClearField("dim")
        for size in given.opt:
            tt.shape.dim.add().dim_value = size
    if changed:
        for vi in [*graph.value_info, *graph.output]:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")


def _infer(light: onnx.ModelProto) -> dict[str, tuple[Shape | None, int]]:
    try:
        return _types(onnx.shape_inference.infer_shapes(light, data_prop=True))
    except Exception:  # onnx raises several types for a graph it rejects: keep declared shapes
        return _types(light)


def _outputs(node: onnx.NodeProto) -> list[str]:
    # Dropout at inference is the identity: its optional mask output is never computed.
    return [t for t in node.output[:1 if node.op_type == "Dropout" else None] if t]


def _infer_with_guesses(model: onnx.ModelProto,
                        shapes: Mapping[str, ShapeRange] | None = None
                        ) -> tuple[dict, set[str]]:
    """Inferred types, plus guesses for outputs inference cannot type (custom-domain ops): each
    is typed like its node's largest activation input, then inference reruns so the nodes after
    it get real shapes again. Also returns the names of the guessed tensors."""
    light, consts, made_up = _light(model, shapes), {i.name for i in model.graph.initializer}, set()
    types = _infer(light)
    for _ in range(_GUESS_ROUNDS):
        guesses = {}
        for node in light.graph.node:
            acts = [types.get(t, (None, 0)) for t in node.input if t and t not in consts]
            if acts and all(shape is not None for shape, _ in acts):
                guesses.update({t: max(acts, key=lambda st: math.prod(_ones(st[0])))
                                for t in _outputs(node) if types.get(t, (None,))[0] is None})
        if not guesses:
            break
        made_up.update(guesses)
        light.graph.value_info.extend(helper.make_tensor_value_info(t, elem, shape)
                                      for t, (shape, elem) in guesses.items())
        types = _infer(light)
    return types, made_up


def tensor_shapes(model: onnx.ModelProto, shapes: Mapping[str, ShapeRange] | None = None
                  ) -> dict[str, tuple[int | None, ...]]:
    """Every tensor with a known rank -> its shape (None for a dynamic dim), after inference
    (with the inputs at their `opt` shapes when `shapes` is given)."""
    return {k: s for k, (s, _) in _infer(_light(model, shapes)).items() if s is not None}


def tensor_bytes(model: onnx.ModelProto, shapes: Mapping[str, ShapeRange] | None = None
                 ) -> dict[str, int | None]:
    """Every typed tensor -> its size in bytes, None unless the shape and dtype are fully known."""
    return {k: _bytes(s, elem) for k, (s, elem) in _infer(_light(model, shapes)).items()}


def roofline_us(flops: float, bytes_: float, peak_flops: float, peak_bytes_per_s: float) -> float:
    """Roofline time in microseconds: the larger of compute time and memory time."""
    if peak_flops <= 0 or peak_bytes_per_s <= 0:
        raise ValueError("peak_flops and peak_bytes_per_s must be positive")
    return max(flops / peak_flops, bytes_ / peak_bytes_per_s) * 1e6


def _is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _flops(node: onnx.NodeProto, view: _Node) -> tuple[float, bool]:
    """(FLOPs, is the op known). A formula that cannot run falls back to the per-element guess."""
    fn = COST.get(node.op_type) if _is_standard(node) else None
    try:
        if fn is not None:
            return float(fn(view)), True
    except Exception:  # an odd graph (bad rank, attribute) downgrades the node to a guess
        pass
    view.guessed = True
    try:
        return _FALLBACK_FLOPS_PER_ELEMENT * view.out_elems(), fn is not None
    except _Missing:
        return 0.0, fn is not None


def analyze(model: onnx.ModelProto,
            shapes: Mapping[str, ShapeRange] | None = None) -> CostReport:
    """Cost every node of the top-level graph, at the inputs' `opt` shapes when `shapes` is
    given (ShapeError for a dynamic input it lacks). Never raises for unknown ops or missing
    shapes."""
    types, made_up = _infer_with_guesses(model, shapes)
    consts = {i.name for i in model.graph.initializer}  # also those listed in graph.input (IR<4)
    nodes, unknown, missing = [], {}, 0
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        ins, outs = [t for t in dict.fromkeys(node.input) if t], _outputs(node)
        if _is_standard(node) and (node.op_type == "Constant" or (
                ins and all(t in consts for t in ins) and node.op_type not in _NOT_FOLDABLE)):
            consts.update(outs)  # folded at build time; consumers count its outputs as weights
            nodes.append(NodeCost(index, name, node.op_type, 0.0, 0, 0, 0, False))
            continue
        lacks_shape = any(t in made_up or types.get(t, (None,))[0] is None for t in ins + outs)
        missing += lacks_shape
        # Bytes with dynamic dims as 1 and fp32 for an unknown dtype (both guesses); a tensor
        # still without a shape is taken as big as the node's largest known activation.
        sizes = {t: _bytes(_ones(types[t][0]), types[t][1], 32)
                 for t in ins + outs if types.get(t, (None,))[0] is not None}
        guessed = any(None in types[t][0] or _bits(types[t][1]) is None for t in sizes)
        guess = max((b for t, b in sizes.items() if t not in consts), default=0)
        sizes = {t: sizes.get(t, guess) for t in ins + outs}
        out_bytes, weight, act = sum(sizes[t] for t in outs), 0, 0
        for t in ins:
            b = sizes[t]
            if t == node.input[0] and _is_standard(node) and node.op_type in _READS_METADATA:
                b = 0
            elif t == node.input[0] and _is_standard(node) and node.op_type in _READS_OUTPUT_SIZE:
                b = min(b, out_bytes)
            weight, act = (weight + b, act) if t in consts else (weight, act + b)
        view = _Node(node, types)
        flops, known_op = _flops(node, view)
        if not known_op:
            unknown[node.op_type] = unknown.get(node.op_type, 0) + 1
        estimated = guessed or lacks_shape or view.guessed or not known_op
        nodes.append(NodeCost(index, name, node.op_type, flops, weight, act, out_bytes, estimated))
    return CostReport(tuple(nodes), unknown, missing, sum(n.flops for n in nodes),
                      sum(n.bytes for n in nodes))
