"""Cut an ONNX model into N slices at cheap, balanced cut points (onnx only; no runtime).

A cut after position i of the topologically ordered compute nodes passes every tensor that is
made at or before i and read after it. Constant subgraphs (Constant, ConstantOfShape of an
initializer, ... : nodes whose inputs are all constant) are weights, not cut tensors: each
slice gets its own copy of the constant nodes and initializers it reads.
Cut choice: prefer points where few tensors cross (one, in a chain of residual blocks), relax
to more only when that buys much better balance; among the allowed points, minimise the
largest slice's estimated cost (binary search on the bound + a greedy fit, which is optimal
for contiguous partitions).
Shapes: slice_model costs the graph at its inputs' `opt` shapes (edgesched.shapes; a dynamic
input without one is a ShapeError naming the model, the input and --shape), cuts only where
every crossing tensor has a shape at min, opt and max, and records those ranges per slice.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from edgesched import dtypes
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.costmodel import NodeCost, analyze, roofline_us
from edgesched.modelfiles.manifest import Manifest, SliceEntry, write_manifest
from edgesched.modelfiles.shaping import tensor_ranges
from edgesched.shapes import ShapeRange, resolve
from edgesched.types import TensorSpec

# Reference device for balancing when no measured per-node times are given: AGX Orin FP32 at
# max clocks (5.32 TFLOP/s, 204.8 GB/s) plus a per-kernel launch cost. Only ratios matter here.
REF_PEAK_FLOPS = 5.32e12
REF_PEAK_BYTES_PER_S = 204.8e9
LAUNCH_US = 5.0
BALANCE_SLACK = 1.10       # accept 10% worse balance to cut where fewer tensors cross


@dataclass(frozen=True)
class SlicePlan:
    """Where the cuts go and what they cost (the slices themselves are written by write_slices)."""

    bounds: tuple[tuple[int, int], ...]     # [start, end) over compute-node positions
    costs_us: tuple[float, ...]
    crossing: tuple[tuple[str, ...], ...]   # tensors passed across each cut
    notes: tuple[str, ...]                  # what the user should know (fewer slices, ...)

    @property
    def balance(self) -> float:
        """Largest slice cost / mean slice cost (1.0 is perfect)."""
        mean = sum(self.costs_us) / len(self.costs_us)
        return max(self.costs_us) / mean if mean > 0 else 1.0


def _reads(node: onnx.NodeProto) -> list[str]:
    """Tensors a node reads: its inputs, plus outer-scope names its subgraphs (If/Loop/Scan
    bodies) use without defining: those cross a cut exactly like inputs do."""
    reads = [x for x in node.input if x]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                reads.extend(x for x in _reads(inner) if x not in defined and x not in reads)
                defined.update(inner.output)
    return reads


class _Graph:
    """The graph split into constant nodes and compute nodes, with liveness per cut point."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.initializers = {t.name: t for t in g.initializer}
        input_names = [i.name for i in g.input]
        self.inputs = [n for n in input_names if n not in self.initializers]
        self.outputs = [o.name for o in g.output]
        constant: set[str] = set(self.initializers)
        self.const_nodes, self.nodes = [], []
        for node in g.node:           # ONNX requires graph.node in topological order
            feeds = _reads(node)
            if node.op_type != "Constant" and not feeds or any(x not in constant for x in feeds) \
                    or not node.output:
                self.nodes.append(node)
            else:
                self.const_nodes.append(node)
                constant.update(node.output)
        self.constant = constant
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        last_use: dict[str, int] = {}
        self.reads = [_reads(n) for n in self.nodes]
        for i, reads in enumerate(self.reads):
            for x in reads:
                if x in self.producer:
                    last_use[x] = i
        self.last_use = last_use

    def crossing(self, cut: int) -> list[str]:
        """Computed tensors made at positions < cut and read at positions >= cut."""
        return [t for t, p in self.producer.items()
                if p < cut and self.last_use.get(t, -1) >= cut]


def _node_costs_us(model: onnx.ModelProto, graph: _Graph, measured_us: dict[str, float] | None,
                   shapes: Mapping[str, ShapeRange] | None) -> tuple[np.ndarray, list[NodeCost]]:
    report = analyze(model, shapes)
    by_index = {c.index: c for c in report.nodes}
    index_of = {id(n): i for i, n in enumerate(model.graph.node)}
    costs, kept = [], []
    for node in graph.nodes:
        c = by_index[index_of[id(node)]]
        kept.append(c)
        if measured_us and c.name in measured_us:
            costs.append(measured_us[c.name])
        else:
            costs.append(roofline_us(c.flops, c.bytes, REF_PEAK_FLOPS, REF_PEAK_BYTES_PER_S)
                         + LAUNCH_US)
    return np.asarray(costs, dtype=float), kept


def _fit(prefix: np.ndarray, points: list[int], bound: float, parts: int) -> list[int] | None:
    """Greedy: cut as late as allowed under `bound`; the cuts if <= parts slices suffice."""
    cuts, start = [], 0
    total = len(prefix) - 1
    j = 0
    while prefix[total] - prefix[start] > bound:
        best = None
        while j < len(points) and prefix[points[j]] - prefix[start] <= bound:
            if points[j] > start:
                best = points[j]
            j += 1
        if best is None or len(cuts) == parts - 1:
            return None
        cuts.append(best)
        start = best
    return cuts


def _min_max_cuts(prefix: np.ndarray, points: list[int], parts: int) -> tuple[float, list[int]]:
    lo = max(float(np.max(np.diff(prefix))), prefix[-1] / parts)
    hi = float(prefix[-1])
    best = _fit(prefix, points, hi, parts) or []
    for _ in range(60):                              # bound found to ~1e-18 of the total
        mid = (lo + hi) / 2
        cuts = _fit(prefix, points, mid, parts)
        if cuts is None:
            lo = mid
        else:
            hi, best = mid, cuts
    return hi, best


def _split_further(prefix: np.ndarray, points: list[int], cuts: list[int],
                   parts: int) -> list[int]:
    """Add cuts inside the costliest slices until there are `parts` (or no point is left)."""
    cuts = sorted(cuts)
    while len(cuts) < parts - 1:
        edges = [0, *cuts, len(prefix) - 1]
        spans = sorted(range(len(edges) - 1), key=lambda k: prefix[edges[k + 1]] - prefix[edges[k]],
                       reverse=True)
        for k in spans:
            a, b = edges[k], edges[k + 1]
            inside = [p for p in points if a < p < b]
            if inside:
                middle = (prefix[a] + prefix[b]) / 2
                cuts.append(min(inside, key=lambda p: abs(prefix[p] - middle)))
                cuts.sort()
                break
        else:
            break
    return cuts


def plan_slices(model: onnx.ModelProto, parts: int, measured_us: dict[str, float] | None = None,
                shapes: Mapping[str, ShapeRange] | None = None) -> SlicePlan:
    """Cuts for `parts` slices. With `shapes` (the inputs' ranges) nodes are costed at `opt`
    and cuts pass only tensors with a shape at min, opt and max; without, dynamic dims count
    as 1 (an estimate for tests and reports: slice_model always has shapes)."""
    graph = _Graph(model)
    ranges = None if shapes is None else tensor_ranges(model, shapes)
    return _plan(model, graph, parts, measured_us, shapes, ranges)[0]


def _plan(model: onnx.ModelProto, graph: _Graph, parts: int, measured_us: dict | None,
          shapes: Mapping[str, ShapeRange] | None, ranges: dict[str, ShapeRange] | None
          ) -> tuple[SlicePlan, list[NodeCost]]:
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    costs, node_costs = _node_costs_us(model, graph, measured_us, shapes)
    n = len(graph.nodes)
    if n == 0:
        raise ModelLoadError(f"{model.graph.name or 'the model'} has no compute nodes to slice "
                             "(every output is a constant)")
    typed = _typed(model)
    notes = []
    if parts > n:
        notes.append(f"asked for {parts} slices but the graph has only {n} compute nodes")
        parts = max(n, 1)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    heaviest = int(np.argmax(costs))
    if costs[heaviest] * parts > 1.05 * prefix[-1]:   # only when it bounds balance noticeably
        notes.append(f"node {graph.nodes[heaviest].name or heaviest!r} alone is "
                     f"{100 * costs[heaviest] / prefix[-1]:.0f}% of the model: no cut balances "
                     f"better than {costs[heaviest] * parts / prefix[-1]:.2f}")
    # A cut passes tensors between engines, so their types must be known (a custom op whose
    # outputs shape inference cannot type is fine inside a slice, not at its edge), and, with
    # shapes, their ranges too: a TensorRT profile for the next slice is built from them.
    crossing = {cut: graph.crossing(cut) for cut in range(1, n)}
    width = {cut: len(ts) for cut, ts in crossing.items()
             if all(t in typed and (ranges is None or t in ranges) for t in ts)}
    usable = sorted(width)
    if len(usable) < n - 1:
        notes.append(f"{n - 1 - len(usable)} cut points skipped: a tensor there has no "
                     "inferred type" + ("" if ranges is None else " or shape"))
    _, unrestricted = _min_max_cuts(prefix, usable, parts)
    unrestricted = _split_further(prefix, usable, unrestricted, parts)
    best_bound = _bound(prefix, unrestricted)
    cuts = unrestricted
    for w in sorted(set(width.values())):              # narrowest cut points first
        points = [c for c in usable if width[c] <= w]
        _, candidate = _min_max_cuts(prefix, points, parts)
        candidate = _split_further(prefix, points, candidate, parts)
        if len(candidate) == len(unrestricted) \
                and _bound(prefix, candidate) <= BALANCE_SLACK * best_bound:
            cuts = candidate
            break
    if len(cuts) < parts - 1:
        notes.append(f"only {len(cuts) + 1} slices are possible")
    edges = [0, *cuts, n]
    bounds = tuple(zip(edges[:-1], edges[1:]))
    plan = SlicePlan(bounds, tuple(float(prefix[b] - prefix[a]) for a, b in bounds),
                     tuple(tuple(crossing[c]) for c in cuts), tuple(notes))
    return plan, node_costs


def _bound(prefix: np.ndarray, cuts: list[int]) -> float:
    edges = [0, *sorted(cuts), len(prefix) - 1]
    return max(prefix[b] - prefix[a] for a, b in zip(edges[:-1], edges[1:]))


def _typed(model: onnx.ModelProto) -> set[str]:
    """Tensors whose element type is known after shape inference (run here if the caller did
    not: load_onnx already has)."""
    if model.graph.node and not model.graph.value_info:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return {name for name, info in _value_infos(model).items()
            if info.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED}


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    infos = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    for t in g.initializer:
        infos.setdefault(t.name, helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return infos


def _spec(info: onnx.ValueInfoProto) -> TensorSpec:
    """A model input's or output's spec: it must be an element type edgesched serves."""
    tensor = info.type.tensor_type
    try:
        dtype = dtypes.from_onnx(tensor.elem_type).name
    except dtypes.UnsupportedDtype as e:    # slice_model names the file
        raise dtypes.UnsupportedDtype(f"model tensor {info.name!r}: {e}") from None
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                  for d in tensor.shape.dim)
    return TensorSpec(info.name, dtype, shape)


def _constant_closure(graph: _Graph, names: set[str]) -> tuple[list, list]:
    """The constant nodes and initializers that make the constant tensors in `names`."""
    made_by = {o: n for n in graph.const_nodes for o in n.output}
    nodes, inits, todo, seen = [], {}, list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in graph.initializers:
            inits[name] = graph.initializers[name]
        elif name in made_by:
            nodes.append(made_by[name])
            todo.extend(_reads(made_by[name]))
    # Original graph order for both, so the same model always slices to the same bytes.
    order = {id(n): i for i, n in enumerate(graph.const_nodes)}
    init_order = {name: i for i, name in enumerate(graph.initializers)}
    return sorted({id(n): n for n in nodes}.values(), key=lambda n: order[id(n)]), \
        sorted(inits.values(), key=lambda t: init_order[t.name])


def _slice_model(model: onnx.ModelProto, graph: _Graph, infos: dict, start: int, end: int,
                 index: int) -> tuple[onnx.ModelProto, list[str], list[str]]:
    nodes = graph.nodes[start:end]
    made_here: set[str] = set()
    inputs, constants = [], set()
    for node, reads in zip(nodes, graph.reads[start:end]):
        for x in reads:
            if x in made_here or x in inputs:
                continue
            if x in graph.constant:
                constants.add(x)
            elif x in graph.producer or x in graph.inputs:
                inputs.append(x)
        made_here.update(o for o in node.output if o)
    # A graph output leaves from the slice that makes it (the manifest allows any slice to
    # produce model outputs), so it never widens later cuts. Constant outputs (fixed anchor
    # boxes, say) leave from the last slice, which makes them.
    outputs = [o for n in nodes for o in n.output
               if o and (graph.last_use.get(o, -1) >= end or o in graph.outputs)]
    if end == len(graph.nodes):
        fixed = [o for o in graph.outputs if o in graph.constant and o not in outputs]
        constants.update(fixed)
        outputs += fixed
    const_nodes, inits = _constant_closure(graph, constants)
    missing = [x for x in inputs + outputs if x not in infos]
    if missing:
        raise ModelLoadError(f"cannot infer the type of tensor {missing[0]!r} at a cut")
    g = model.graph
    value_info = [infos[o] for n in nodes for o in n.output
                  if o in infos and o not in outputs]
    sub = helper.make_graph(
        [copy.deepcopy(n) for n in const_nodes + nodes], f"{g.name or 'model'}_slice{index}",
        [infos[x] for x in inputs], [infos[x] for x in outputs],
        initializer=[copy.deepcopy(t) for t in inits], value_info=value_info)
    if model.ir_version < 4:   # IR < 4: every initializer must also be a graph input
        sub.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                         for t in inits)
    out = helper.make_model(sub, opset_imports=list(model.opset_import),
                            producer_name="edgesched-slicer")
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out, inputs, outputs


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and shape-infer an ONNX file; ModelLoadError (one line) if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # protobuf DecodeError, ValidationError, InferenceError...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{path}: not a valid ONNX model: {first}") from None


def slice_model(path: str | Path, parts: int, out_dir: str | Path, name: str | None = None,
                measured_us: dict[str, float] | None = None,
                shapes: Mapping[str, ShapeRange] | None = None, *,
                shape_hint: str = "--shape {name}:{dims}") -> tuple[Manifest, SlicePlan]:
    """Write out_dir/slice_XX.onnx and out_dir/manifest.json; return them and the plan.

    `shapes`: input name -> fixed shape or range, for every input with dynamic dims (static
    ones may be left out). A dynamic input without one is a ShapeError naming the model, the
    input and `shape_hint` (how the caller's user gives it: resolve's `how`)."""
    model = load_onnx(path)
    graph = _Graph(model)
    infos = _value_infos(model)
    try:        # before anything is written: a model edgesched cannot serve leaves no files
        specs = (tuple(_spec(infos[x]) for x in graph.inputs),
                 tuple(_spec(infos[x]) for x in graph.outputs))
    except dtypes.UnsupportedDtype as e:
        raise ModelLoadError(f"{path}: {e}") from None
    model_name = name or Path(path).stem
    resolved = resolve(model_name, specs[0], shapes, shape_hint)
    ranges = tensor_ranges(model, resolved)
    plan, node_costs = _plan(model, graph, parts, measured_us, resolved, ranges)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("slice_[0-9][0-9].*"):   # from an earlier build with more slices
        stale.unlink()
    entries = []
    for k, ((start, end), est_us) in enumerate(zip(plan.bounds, plan.costs_us)):
        sub, inputs, outputs = _slice_model(model, graph, infos, start, end, k)
        file = f"slice_{k:02d}.onnx"
        onnx.save(sub, str(out_dir / file))
        cost = {"flops": float(sum(c.flops for c in node_costs[start:end])),
                "bytes": int(sum(c.bytes for c in node_costs[start:end])),
                "est_us": round(est_us, 3), "nodes": end - start}
        # every input has a range: graph inputs from `resolved`, cut tensors (plan cuts only
        # where they have one) from inference at min, opt and max
        entries.append(SliceEntry(k, file, tuple(inputs), tuple(outputs), cost,
                                  shapes={t: resolved.get(t) or ranges[t] for t in inputs}))
    # `source` is recorded as given (not resolved): shipped manifests stay machine-independent.
    manifest = Manifest(model_name, Path(path).name, *specs, tuple(entries), out_dir, resolved)
    write_manifest(manifest)
    return manifest, plan
