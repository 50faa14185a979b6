"""Shared by test_slicing_*.py: ONNX Runtime runs, an independent reading of the graph, costs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgesched.modelfiles.costmodel import analyze, roofline_us
from edgesched.modelfiles.slicing import LAUNCH_US, REF_PEAK_BYTES_PER_S, REF_PEAK_FLOPS
from tests import graphs

try:
    import onnxruntime as ort
except ImportError:          # the [cpu] extra: only the tests that run slices need it
    ort = None
needs_ort = pytest.mark.skipif(ort is None, reason="onnxruntime is not installed")

TOL = {"rtol": 1e-4, "atol": 1e-6}
PARTS = range(2, 9)
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CONSTANT_OPS = {"Constant", "ConstantOfShape"}


# --- helpers: ONNX Runtime, and an independent reading of the graph --------------------------

def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_sliced(manifest, feeds: dict) -> dict[str, np.ndarray]:
    env = dict(feeds)
    for entry in manifest.slices:
        sess = session(manifest.slice_path(entry))
        results = sess.run(list(entry.outputs), {name: env[name] for name in entry.inputs})
        env.update(zip(entry.outputs, results))
    return env


def run_reference(model: onnx.ModelProto, feeds: dict, extra: list[str]) -> dict:
    """The whole model, with the tensors in `extra` exposed as additional outputs."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    wanted = onnx.ModelProto()
    wanted.CopyFrom(model)
    have = {o.name for o in wanted.graph.output}
    wanted.graph.output.extend(infos[name] for name in dict.fromkeys(extra) if name not in have)
    sess = session_from(wanted)
    names = [o.name for o in sess.get_outputs()]
    real_inputs = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in real_inputs})))


def session_from(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def reads(node: onnx.NodeProto) -> set[str]:
    """Inputs plus names its subgraphs read from outer scopes (written independently of the
    slicer's own helper)."""
    out = {x for x in node.input if x}
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                local |= set(inner.output)
            for inner in sub.node:
                out |= reads(inner) - local
    return out


def constant_tensors(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(constant tensor names, names of the nodes that make them): initializers, Constant and
    ConstantOfShape outputs, and outputs of nodes that read only constants."""
    g = model.graph
    const = {t.name for t in g.initializer}
    const_nodes = set()
    for i, node in enumerate(g.node):
        r = reads(node)
        if node.op_type in CONSTANT_OPS and r <= const or (r and r <= const):
            const |= set(node.output)
            const_nodes.add(node.name or f"#{i}")
    return const, const_nodes


def compute_indices(model: onnx.ModelProto) -> list[int]:
    _, const_nodes = constant_tensors(model)
    return [i for i, n in enumerate(model.graph.node) if (n.name or f"#{i}") not in const_nodes]


def compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [model.graph.node[i] for i in compute_indices(model)]


def node_costs(model: onnx.ModelProto, measured: dict | None = None) -> list[float]:
    """Per compute node, the slicer's documented cost: measured time, else roofline + launch."""
    report = {c.index: c for c in analyze(model).nodes}
    out = []
    for i in compute_indices(model):
        c = report[i]
        if measured and c.name in measured:
            out.append(measured[c.name])
        else:
            out.append(roofline_us(c.flops, c.bytes, REF_PEAK_FLOPS, REF_PEAK_BYTES_PER_S)
                       + LAUNCH_US)
    return out


def optimal_bound(costs: list[float], parts: int) -> float:
    """Smallest possible largest-slice cost over all contiguous partitions into `parts`."""
    n = len(costs)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    best = [[np.inf] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(1, n + 1):
            best[k][j] = min(max(best[k - 1][i], prefix[j] - prefix[i]) for i in range(j))
    return float(best[parts][n])


KIND_PARTS = [(kind, n) for kind in graphs.ALL_KINDS for n in PARTS]
