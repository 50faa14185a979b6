"""The fake `tensorrt` builder and small model helpers, shared by test_build_tensorrt_*.py.

The fake (tests/fakes_cuda/tensorrt_builder.py: what it checks, per TensorRT version) is
injected into sys.modules with a real ModuleSpec, so `importlib.util.find_spec` (what
`available()` asks) sees it exactly as it would see the real package; the `fake_trt` fixture
also installs the fake pycuda and libcuda (device identity, calibration memory) on a FakeGpu.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from tests.fakes_cuda.tensorrt_builder import make_builder


class FakeTRT:
    """The fake builder module (tests/fakes_cuda/tensorrt_builder.py) and what it saw: `calls`
    records (what, args...) in call order; `problems` what the code did wrong that TensorRT
    would not have said; `batches` the calibration batches it read from device memory.
    `gpu` is the fake device it builds on (set by the fixture: pycuda and libcuda fakes)."""

    def __init__(self, version: str = "10.3.0", dla_cores: int = 2, parse_errors=None,
                 build_fails: bool = False, deserialize_fails: bool = False):
        self.calls: list[tuple] = []
        self.problems: list[str] = []
        self.batches: list[dict] = []
        self.version, self.dla_cores = version, dla_cores
        self.parse_errors = parse_errors          # None: parse succeeds; list: parse fails
        self.build_fails, self.deserialize_fails = build_fails, deserialize_fails
        self.blobs: list[bytes] = []
        self.gpu = None
        self.module = make_builder(self)

    def record(self, *what) -> None:
        self.calls.append(what)

    def named(self, what: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == what]

    def index(self, call: tuple) -> int:
        return self.calls.index(call)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def dynamic_model(batch_dims=("N",), two_inputs: bool = False) -> onnx.ModelProto:
    shape = [*batch_dims, 4]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)]
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, "T"]))
        nodes.append(helper.make_node("Relu", ["z"], ["w"]))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)]
    if two_inputs:
        outputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, "T"]))
    model = helper.make_model(helper.make_graph(nodes, "dyn", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


def qdq_model() -> onnx.ModelProto:
    """x[1, 4] -> QuantizeLinear -> DequantizeLinear -> Relu: explicitly quantized."""
    scale = helper.make_tensor("scale", onnx.TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("zero", onnx.TensorProto.INT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def fp16_model() -> onnx.ModelProto:
    """x[1, 4] (FP16) * w (FP16) -> Relu: a model already in FP16, as TensorRT 11 wants."""
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT16, [4], [0.5, 1.0, 1.5, 2.0])
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    graph = helper.make_graph(
        nodes, "half", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
