"""Models for tests: the shipped examples' interfaces, and small ONNX models built with onnx.helper
(a conv net, the same net cut by hand into a sliced-model directory with manifest.json, a
deliberately slow model, a two-input model, a model with a very large output, and a conv net
whose input [N, 3, H, W] is dynamic in every dim but the channels, as exporters write them).

Weights come from a seeded generator, so every build of one model is identical and the sliced
and unsliced versions of the conv net compute the same function.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "engines" / "examples"
# name -> (input name, input shape, output name, output shape): the shipped examples' interfaces.
EXAMPLE_MODELS = {
    "convnet": ("image", (1, 3, 96, 96), "logits", (1, 10)),
    "depthwise": ("image", (1, 3, 128, 128), "scores", (1, 100)),
    "attention": ("tokens", (1, 32, 64), "features", (1, 32, 64)),
}

OPSET = 17
IR_VERSION = 8            # as engines/make_examples.py: older ONNX Runtime and TensorRT read it
SEED = 7

# The skip conv net: image[1,3,16,16] -> logits[1,4].
#   slice 0: a = Relu(Conv3x3(image))            [1,8,16,16]
#   slice 1: b = Relu(Conv3x3(a))                [1,8,16,16]
#   slice 2: logits = Gemm(Flatten(GAP(a + b)))  [1,4]   <- reads `a` across the cut (skip)
SKIP_INPUT = ("image", (1, 3, 16, 16))
SKIP_OUTPUT = ("logits", (1, 4))
_CHANNELS = 8

# The slow model: x[256,512] -> y[256,512] through SLOW_LAYERS rounds of Tanh(x @ W), about
# 2 GFLOP: tens of milliseconds on one CPU core, so requests reliably pile up behind one stream.
SLOW_INPUT = ("x", (256, 512))
SLOW_OUTPUT = ("y", (256, 512))
SLOW_LAYERS = 16

# The pair model: a[2,4], b[2,4] -> out[2,4] = a * b + a (two inputs: for missing/extra inputs).
PAIR_INPUTS = (("a", (2, 4)), ("b", (2, 4)))
PAIR_OUTPUT = ("out", (2, 4))

# The big-output model: x[1,1] -> y[2048,4096] filled with x (32 MiB of float32 per reply).
BIG_INPUT = ("x", (1, 1))
BIG_OUTPUT = ("y", (2048, 4096))


def _value(name: str, shape: tuple[int | str, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _save(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray],
          path: Path, name: str) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgesched-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _skip_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    c = _CHANNELS

    def normal(*shape: int, std: float) -> np.ndarray:
        return (std * rng.standard_normal(shape)).astype(np.float32)

    return {"w0": normal(c, 3, 3, 3, std=0.3), "b0": normal(c, std=0.1),
            "w1": normal(c, c, 3, 3, std=0.2), "b1": normal(c, std=0.1),
            "wf": normal(c, SKIP_OUTPUT[1][1], std=0.5), "bf": normal(SKIP_OUTPUT[1][1], std=0.1)}


def _skip_stages(w: dict[str, np.ndarray]) -> list[tuple[list, dict[str, np.ndarray]]]:
    """The nodes and weights of each of the three slices, in order."""
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    return [
        ([helper.make_node("Conv", ["image", "w0", "b0"], ["conv0"], **conv),
          helper.make_node("Relu", ["conv0"], ["a"])],
         {k: w[k] for k in ("w0", "b0")}),
        ([helper.make_node("Conv", ["a", "w1", "b1"], ["conv1"], **conv),
          helper.make_node("Relu", ["conv1"], ["b"])],
         {k: w[k] for k in ("w1", "b1")}),
        ([helper.make_node("Add", ["a", "b"], ["sum"]),
          helper.make_node("GlobalAveragePool", ["sum"], ["pooled"]),
          helper.make_node("Flatten", ["pooled"], ["flat"]),
          helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"])],
         {k: w[k] for k in ("wf", "bf")}),
    ]


def build_skip_convnet(path: Path) -> Path:
    """The whole skip conv net as one .onnx file (the reference for the sliced directory)."""
    nodes, weights = [], {}
    for stage_nodes, stage_weights in _skip_stages(_skip_weights()):
        nodes += stage_nodes
        weights.update(stage_weights)
    return _save(nodes, [_value(*SKIP_INPUT)], [_value(*SKIP_OUTPUT)], weights, Path(path),
                 "skip_convnet")


def build_sliced_skip_convnet(directory: Path) -> Path:
    """The skip conv net cut into 3 slice files plus manifest.json; slice 2 reads slice 0's `a`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    feature = (1, _CHANNELS) + SKIP_INPUT[1][2:]
    io = [([SKIP_INPUT], [("a", feature)]),
          ([("a", feature)], [("b", feature)]),
          ([("b", feature), ("a", feature)], [SKIP_OUTPUT])]
    slices = []
    for index, ((nodes, weights), (inputs, outputs)) in enumerate(
            zip(_skip_stages(_skip_weights()), io)):
        file = f"slice{index}.onnx"
        _save(nodes, [_value(*t) for t in inputs], [_value(*t) for t in outputs], weights,
              directory / file, f"skip_convnet_slice{index}")
        slices.append({"index": index, "file": file, "inputs": [n for n, _ in inputs],
                       "outputs": [n for n, _ in outputs], "cost": {"flops": 0, "bytes": 0}})
    manifest = {
        "model": "skip_convnet", "source": "skip_convnet.onnx",
        "inputs": [{"name": SKIP_INPUT[0], "dtype": "float32", "shape": list(SKIP_INPUT[1])}],
        "outputs": [{"name": SKIP_OUTPUT[0], "dtype": "float32", "shape": list(SKIP_OUTPUT[1])}],
        "slices": slices,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return directory


def build_slow_model(path: Path, layers: int = SLOW_LAYERS) -> Path:
    """x -> Tanh(x @ W) repeated `layers` times; one shared weight keeps the file small (1 MB)."""
    rng = np.random.default_rng(SEED)
    width = SLOW_INPUT[1][1]
    weights = {"w": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)}
    nodes, current = [], SLOW_INPUT[0]
    for i in range(layers):
        out = SLOW_OUTPUT[0] if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [current, "w"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [out])]
        current = out
    return _save(nodes, [_value(*SLOW_INPUT)], [_value(*SLOW_OUTPUT)], weights, Path(path),
                 "slow")


def build_pair_model(path: Path) -> Path:
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("Add", ["ab", "a"], [PAIR_OUTPUT[0]])]
    return _save(nodes, [_value(*t) for t in PAIR_INPUTS], [_value(*PAIR_OUTPUT)], {},
                 Path(path), "pair")


def build_big_output_model(path: Path) -> Path:
    """x[1,1] -> Expand to BIG_OUTPUT's shape: a tiny request with a 32 MiB reply."""
    nodes = [helper.make_node("Expand", [BIG_INPUT[0], "shape"], [BIG_OUTPUT[0]])]
    return _save(nodes, [_value(*BIG_INPUT)], [_value(*BIG_OUTPUT)],
                 {"shape": np.array(BIG_OUTPUT[1], np.int64)}, Path(path), "big")


def build_fragile_model(path: Path) -> Path:
    """x[n] -> Reshape to [2, 2]: right for n = 4, and for any other n a real ONNX Runtime error
    at run time (the input passes the server's checks: n is a dynamic dimension)."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    return _save(nodes, [_value("x", ("n",))], [_value("y", (2, 2))],
                 {"shape": np.array([2, 2], np.int64)}, Path(path), "fragile")


def build_heavy_input_model(path: Path, layers: int = 4) -> Path:
    """x[n] -> Tanh `layers` times -> ReduceSum to y[1]: takes any size of input (a flood of
    16 MiB requests), a few ms per MiB on one CPU thread."""
    nodes, current = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("Tanh", [current], [f"t{i}"]))
        current = f"t{i}"
    nodes.append(helper.make_node("ReduceSum", [current], ["y"], keepdims=1))
    return _save(nodes, [_value("x", ("n",))], [_value("y", (1,))], {}, Path(path), "heavy")


# The dynamic conv net: image[N,3,H,W] -> logits[N,10]: a stride-2 stem, two residual blocks
# (the second after a stride-2 conv), a global-average-pool head. Its cost grows with N*H*W.
DYNAMIC_INPUT = ("image", ("N", 3, "H", "W"))
DYNAMIC_OUTPUT = ("logits", ("N", 10))


def build_dynamic_convnet(path: Path, width: int = 16) -> Path:
    rng = np.random.default_rng(SEED)
    weights: dict[str, np.ndarray] = {}
    nodes: list = []

    def conv(x: str, c_in: int, c_out: int, out: str, stride: int = 1, relu: bool = True) -> str:
        w, b = f"{out}_w", f"{out}_b"
        weights[w] = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(
            np.float32)
        weights[b] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
        y = f"{out}_conv" if relu else out
        nodes.append(helper.make_node("Conv", [x, w, b], [y], name=y, kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [out], name=out))
        return out

    def residual(x: str, c: int, stem: str) -> str:
        h = conv(conv(x, c, c, f"{stem}_a"), c, c, f"{stem}_b", relu=False)
        nodes.append(helper.make_node("Add", [x, h], [f"{stem}_sum"], name=f"{stem}_sum"))
        nodes.append(helper.make_node("Relu", [f"{stem}_sum"], [stem], name=stem))
        return stem

    x = residual(conv(DYNAMIC_INPUT[0], 3, width, "stem", stride=2), width, "block1")
    x = residual(conv(x, width, 2 * width, "down", stride=2), 2 * width, "block2")
    weights["fc_w"] = (rng.standard_normal((2 * width, 10)) / np.sqrt(2 * width)).astype(
        np.float32)
    weights["fc_b"] = np.zeros(10, np.float32)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [DYNAMIC_OUTPUT[0]], name="fc")]
    return _save(nodes, [_value(*DYNAMIC_INPUT)], [_value(*DYNAMIC_OUTPUT)], weights, Path(path),
                 "dynamic_convnet")


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def build_dynamic_light_cnn(name: str, path: Path) -> Path | None:
    """onnx's real light CNN `name` (squeezenet, densenet121: their global-pool heads take any
    size) as a model exported with dynamic axes: input [N, 3, H, W], outputs [N, ...]. None
    when onnx's test data is not installed."""
    source = LIGHT / f"light_{name}.onnx"
    if not source.is_file():
        return None
    model = onnx.load(str(source))
    weights = {t.name for t in model.graph.initializer}
    (image,) = [i for i in model.graph.input if i.name not in weights]
    for dim, param in zip(image.type.tensor_type.shape.dim, ("N", None, "H", "W")):
        if param:
            dim.Clear()
            dim.dim_param = param
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = "N"
    onnx.save(model, str(path))
    return Path(path)


def dynamic_input(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    shape = (batch, 3, size, size)
    return {DYNAMIC_INPUT[0]: np.random.default_rng(seed).standard_normal(shape).astype(
        np.float32)}


def example_input(name: str, seed: int) -> dict[str, np.ndarray]:
    """A fixed float32 input for shipped example `name` (the same for the same seed)."""
    input_name, shape = EXAMPLE_MODELS[name][:2]
    return {input_name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def skip_input(seed: int) -> dict[str, np.ndarray]:
    name, shape = SKIP_INPUT
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def slow_input(seed: int) -> dict[str, np.ndarray]:
    name, shape = SLOW_INPUT
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def pair_input(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in PAIR_INPUTS}
