"""Generate the workload models under engines/workloads/: real-size networks in tiny files.

Six networks with the layer shapes (so the FLOPs, weight bytes and activation sizes) of what
Jetson boxes run, for `edgesched simulate` workloads and benchmarks:

    detector.onnx    ResNet-18-style backbone (3/4 width) + FPN-lite single-stage head, 384x384
    segmenter.onnx   U-Net, 16..256 channels, separable convs at full and half resolution, 256x256
    classifier.onnx  MobileNetV2 1.0 (inverted residuals, depthwise convs, ReLU6 as Clip), 224x224
    reid.onnx        half-width ResNet-18 embedding net for a tracker, 8 crops of 128x64
    depthnet.onnx    VGG-style monocular-depth encoder-decoder with skips, 192x640
    vgg.onnx         VGG-16 convolutions + global-pool head, 224x224 (very long layers)

Every weight tensor is made at load time by a ConstantOfShape node from a small shape
initializer (as in the "light" models of onnx's test data), so each file is a few KB while
the cost model, the slicer and ONNX Runtime see the full-size network. Weights are constant
per tensor (1 / fan-in, so activations stay in range): the outputs mean nothing, the run
times and memory traffic are those of the real network.

    python engines/make_workload_models.py [--out DIR]

The output is byte-reproducible; tests/unit/test_workload_models.py checks the committed
files against it.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "workloads"
PRODUCER = "edgesched-workloads"


def _load_examples():
    # engines/ is not a package: load the sibling script for its GraphBuilder and validate().
    spec = importlib.util.spec_from_file_location("_make_examples", HERE / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_examples = _load_examples()
validate = _examples.validate
inferred_shapes = _examples.inferred_shapes


class Builder(_examples.GraphBuilder):
    """GraphBuilder whose weights are ConstantOfShape nodes, not stored initializers."""

    def weight(self, name: str, shape, value: float) -> str:
        dims = self.const(f"{name}.shape", list(shape), np.int64)
        fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [float(np.float32(value))])
        return self.op("ConstantOfShape", name, [dims], value=fill)

    def shared(self, name: str, value, dtype=np.float32) -> str:
        """An initializer made once and read by every node that names it."""
        return name if name in self._names else self.const(name, value, dtype)

    def model(self, *args, **kwargs) -> onnx.ModelProto:
        model = super().model(*args, **kwargs)
        model.producer_name = PRODUCER
        return model


def conv(b: Builder, name, x, cin, cout, k, stride=1, group=1, act: str | None = "relu") -> str:
    """Conv with bias (a BatchNorm folded in, as deployed engines have it) + optional activation."""
    fan_in = cin // group * k * k
    w = b.weight(f"{name}.weight", (cout, cin // group, k, k), 1.0 / fan_in)
    bias = b.weight(f"{name}.bias", (cout,), 0.01)
    y = b.op("Conv", name, [x, w, bias], kernel_shape=[k, k], strides=[stride, stride],
             pads=[k // 2] * 4, group=group)
    if act == "relu":
        return b.op("Relu", f"{name}.relu", [y])
    if act == "relu6":
        bounds = [b.scalar("relu6.min", 0.0), b.scalar("relu6.max", 6.0)]
        return b.op("Clip", f"{name}.relu6", [y, *bounds])
    assert act is None, act
    return y


def upsample2x(b: Builder, name, x) -> str:
    scales = b.shared("upsample.scales", [1.0, 1.0, 2.0, 2.0])
    return b.op("Resize", name, [x, "", scales], mode="nearest")


def basic_block(b: Builder, name, x, cin, cout, stride) -> str:
    y = conv(b, f"{name}.conv1", x, cin, cout, 3, stride)
    y = conv(b, f"{name}.conv2", y, cout, cout, 3, act=None)
    if stride != 1 or cin != cout:
        x = conv(b, f"{name}.downsample", x, cin, cout, 1, stride, act=None)
    # 1/fan-in weights keep each branch at its input's scale: the sum at most doubles per block.
    return b.op("Relu", f"{name}.relu", [b.op("Add", f"{name}.add", [y, x])])


def resnet(b: Builder, x, widths, stem_k=7) -> list[str]:
    """ResNet-18 layout (stem, maxpool, 4 stages x 2 basic blocks); the output of every stage."""
    x = conv(b, "stem.conv", x, 3, widths[0], stem_k, stride=2)
    x = b.op("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin, stages = widths[0], []
    for s, cout in enumerate(widths, start=1):
        for i in (1, 2):
            x = basic_block(b, f"layer{s}.block{i}", x, cin, cout, 2 if i == 1 and s > 1 else 1)
            cin = cout
        stages.append(x)
    return stages


def to_rows(b: Builder, name, x, per_cell: int, rows: int, output: str) -> str:
    """[1, A*per_cell, H, W] -> [1, H*W*A, per_cell], the usual single-stage detector layout."""
    t = b.op("Transpose", f"{name}.transpose", [x], perm=[0, 2, 3, 1])
    shape = b.const(f"{name}.rows_shape", [1, rows, per_cell], np.int64)
    return b.op("Reshape", f"{name}.reshape", [t, shape], output=output)


DETECTOR_SIZE, DETECTOR_ANCHORS, DETECTOR_CLASSES = 384, 3, 80


def build_detector() -> onnx.ModelProto:
    b = Builder()
    widths = (48, 96, 192, 384)  # ResNet-18 at 3/4 width: full width at 384x384 is ~11 GFLOPs
    _, _, c4, c5 = resnet(b, "image", widths)  # c4: stride 16 (24x24), c5: stride 32 (12x12)
    ch, a = 128, DETECTOR_ANCHORS
    top = upsample2x(b, "neck.up", conv(b, "neck.lateral5", c5, widths[3], ch, 1))
    p4 = b.op("Add", "neck.merge", [top, conv(b, "neck.lateral4", c4, widths[2], ch, 1)])
    p4 = conv(b, "neck.smooth", p4, ch, ch, 3)
    cells = (DETECTOR_SIZE // 16) ** 2 * a
    box = conv(b, "head.box.tower", p4, ch, ch, 3)
    box = conv(b, "head.box.pred", box, ch, a * 4, 3, act=None)
    to_rows(b, "head.box", box, 4, cells, output="boxes")
    cls = conv(b, "head.cls.tower", p4, ch, ch, 3)
    cls = conv(b, "head.cls.pred", cls, ch, a * DETECTOR_CLASSES, 3, act=None)
    cls = b.op("Sigmoid", "head.cls.sigmoid", [cls])
    to_rows(b, "head.cls", cls, DETECTOR_CLASSES, cells, output="scores")
    return b.model(
        "detector",
        "Camera object detector: ResNet-18-style backbone at 3/4 width, FPN-lite neck at stride "
        f"16, box and class towers, {a} anchors x {DETECTOR_CLASSES} classes per cell.",
        [("image", (1, 3, DETECTOR_SIZE, DETECTOR_SIZE))],
        [("boxes", (1, cells, 4)), ("scores", (1, cells, DETECTOR_CLASSES))],
    )


SEGMENTER_SIZE, SEGMENTER_CLASSES = 256, 19


def separable(b: Builder, name, x, cin, cout) -> str:
    """Depthwise 3x3 + pointwise 1x1: a few FLOPs per byte of activation moved."""
    x = conv(b, f"{name}.dw", x, cin, cin, 3, group=cin)
    return conv(b, f"{name}.pw", x, cin, cout, 1)


def build_segmenter() -> onnx.ModelProto:
    b = Builder()
    widths = (16, 32, 64, 128, 256)
    # Levels 1-2 (256x256 and 128x128) use separable convs, as light edge U-Nets do: their big,
    # thin activations make them memory-bound; the regular 3x3 convs below are compute-bound.
    def block(name, x, cin, c, level) -> str:
        if level <= 2 and cin > 3:
            return separable(b, name, x, cin, c)
        return conv(b, name, x, cin, c, 3)

    x, cin, skips = "image", 3, []
    for level, c in enumerate(widths, start=1):
        if level > 1:
            x = b.op("MaxPool", f"enc{level}.pool", [x], kernel_shape=[2, 2], strides=[2, 2])
        x = block(f"enc{level}.conv1", x, cin, c, level)
        x = block(f"enc{level}.conv2", x, c, c, level)
        skips.append(x)
        cin = c
    for level in range(len(widths) - 1, 0, -1):
        c = widths[level - 1]
        up = upsample2x(b, f"dec{level}.up", x)
        x = b.op("Concat", f"dec{level}.concat", [up, skips[level - 1]], axis=1)
        x = block(f"dec{level}.conv1", x, cin + c, c, level)
        x = block(f"dec{level}.conv2", x, c, c, level)
        cin = c
    weight = b.weight("head.weight", (SEGMENTER_CLASSES, cin, 1, 1), 1.0 / cin)
    bias = b.weight("head.bias", (SEGMENTER_CLASSES,), 0.01)
    b.op("Conv", "head", [x, weight, bias], output="mask", kernel_shape=[1, 1])
    size = SEGMENTER_SIZE
    return b.model(
        "segmenter",
        "U-Net: 5 levels of 16-256 channels (depthwise-separable convs at the top two), "
        f"MaxPool down, nearest Resize up, skip Concats, per-pixel logits for "
        f"{SEGMENTER_CLASSES} classes.",
        [("image", (1, 3, size, size))],
        [("mask", (1, SEGMENTER_CLASSES, size, size))],
    )


# MobileNetV2 1.0: (expansion t, channels c, blocks n, first stride s).
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                 (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def build_classifier() -> onnx.ModelProto:
    b = Builder()
    x = conv(b, "stem.conv", "image", 3, 32, 3, stride=2, act="relu6")
    cin, index = 32, 0
    for t, c, n, s in _MOBILENET_V2:
        for i in range(n):
            name, stride, hidden = f"block{index}", s if i == 0 else 1, cin * t
            y = conv(b, f"{name}.expand", x, cin, hidden, 1, act="relu6") if t != 1 else x
            y = conv(b, f"{name}.dw", y, hidden, hidden, 3, stride, group=hidden, act="relu6")
            y = conv(b, f"{name}.project", y, hidden, c, 1, act=None)
            x = b.op("Add", f"{name}.add", [x, y]) if stride == 1 and cin == c else y
            cin, index = c, index + 1
    x = conv(b, "last.conv", x, cin, 1280, 1, act="relu6")
    x = b.op("GlobalAveragePool", "head.pool", [x])
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    w = b.weight("head.fc.weight", (1000, 1280), 1.0 / 1280)
    bias = b.weight("head.fc.bias", (1000,), 0.01)
    b.op("Gemm", "head.fc", [x, w, bias], output="logits", transB=1)
    return b.model(
        "classifier",
        "MobileNetV2 1.0: 17 inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1 project) "
        "with ReLU6, 1280-channel last conv, 1000 classes.",
        [("image", (1, 3, 224, 224))],
        [("logits", (1, 1000))],
    )


REID_BATCH, REID_DIM = 8, 128


def build_reid() -> onnx.ModelProto:
    b = Builder()
    widths = (32, 64, 128, 256)  # half-width ResNet-18: crops are small, 8 of them at once
    *_, x = resnet(b, "crops", widths)
    x = b.op("GlobalAveragePool", "head.pool", [x])
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    w = b.weight("head.fc.weight", (REID_DIM, widths[-1]), 1.0 / widths[-1])
    bias = b.weight("head.fc.bias", (REID_DIM,), 0.01)
    x = b.op("Gemm", "head.fc", [x, w, bias], transB=1)
    # Unit-length embeddings: the tracker matches detections by cosine distance.
    b.op("LpNormalization", "head.l2norm", [x], output="embeddings", axis=1, p=2)
    return b.model(
        "reid",
        "Re-identification embedding net for a tracker: half-width ResNet-18 on 128x64 person "
        f"crops, {REID_DIM}-d L2-normalised embeddings, batch of {REID_BATCH} detections.",
        [("crops", (REID_BATCH, 3, 128, 64))],
        [("embeddings", (REID_BATCH, REID_DIM))],
    )


DEPTH_H, DEPTH_W = 192, 640


def build_depthnet() -> onnx.ModelProto:
    b = Builder()
    widths = (32, 64, 128, 256, 512)
    x, cin, skips = "image", 3, []
    for level, c in enumerate(widths, start=1):
        x = conv(b, f"enc{level}.conv1", x, cin, c, 3)
        skips.append((x, c))
        x = conv(b, f"enc{level}.conv2", x, c, c, 3, stride=2)  # VGG-style: stride-2 conv, no pool
        cin = c
    # Each decoder level halves the channels of the encoder level it joins (as Monodepth's).
    for level in range(len(widths), 0, -1):
        skip, skip_c = skips[level - 1]
        c = skip_c // 2
        up = upsample2x(b, f"dec{level}.up", x)
        x = b.op("Concat", f"dec{level}.concat", [up, skip], axis=1)
        x = conv(b, f"dec{level}.conv1", x, cin + skip_c, c, 3)
        x = conv(b, f"dec{level}.conv2", x, c, c, 3)
        cin = c
    x = conv(b, "head.conv", x, cin, 1, 3, act=None)
    b.op("Sigmoid", "head.sigmoid", [x], output="depth")  # disparity in (0, 1), as Monodepth
    return b.model(
        "depthnet",
        "Monocular depth: VGG-style encoder (5 levels of 32-512 channels, stride-2 convs) and "
        "decoder with nearest Resize and skip Concats, sigmoid disparity at full resolution.",
        [("image", (1, 3, DEPTH_H, DEPTH_W))],
        [("depth", (1, 1, DEPTH_H, DEPTH_W))],
    )


VGG_SIZE = 224


def build_vgg() -> onnx.ModelProto:
    b = Builder()
    x, cin = "image", 3
    # VGG-16's 13 convolutions: few, long layers (the first ones 3.7 GFLOPs each at 224x224),
    # the case a scheduler cannot interleave around at layer boundaries.
    for stage, (c, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
                                       start=1):
        for k in range(1, convs + 1):
            x = conv(b, f"stage{stage}.conv{k}", x, cin, c, 3)
            cin = c
        x = b.op("MaxPool", f"stage{stage}.pool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("GlobalAveragePool", "head.pool", [x])
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    w = b.weight("head.fc.weight", (1000, cin), 1.0 / cin)
    bias = b.weight("head.fc.bias", (1000,), 0.01)
    b.op("Gemm", "head.fc", [x, w, bias], output="logits", transB=1)
    return b.model(
        "vgg",
        "VGG-16 convolutions (13 3x3 convs of 64-512 channels, 2x2 max pools) at 224x224 with "
        "a global-pool classifier head: a best-effort model with very long layers.",
        [("image", (1, 3, VGG_SIZE, VGG_SIZE))],
        [("logits", (1, 1000))],
    )


MODELS = {
    "detector.onnx": build_detector,
    "segmenter.onnx": build_segmenter,
    "classifier.onnx": build_classifier,
    "reid.onnx": build_reid,
    "depthnet.onnx": build_depthnet,
    "vgg.onnx": build_vgg,
}


def summary(filename: str, model: onnx.ModelProto, size_bytes: int) -> str:
    from edgesched.modelfiles.costmodel import (
        analyze,  # the package is installed wherever this runs
    )

    report = analyze(model)
    weights = sum(n.weight_bytes for n in report.nodes)
    return (f"{filename}: {size_bytes / 1024:.1f} KB, {len(model.graph.node)} nodes, "
            f"{report.total_flops / 1e9:.2f} GFLOPs, {weights / 1e6:.1f} MB weights, "
            f"{report.total_bytes / 1e6:.0f} MB moved "
            f"({report.total_flops / report.total_bytes:.0f} FLOP/B)")


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
        print(summary(filename, model, len(data)))


if __name__ == "__main__":
    main()
