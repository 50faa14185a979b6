"""Per-layer times from TensorRT's IProfiler, mapped back to the ONNX nodes of a slice.

TensorRT names each engine layer after the ONNX nodes it was made from; a fused layer joins
them with " + " ("conv1 + relu1"). With DETAILED profiling verbosity the layer JSON that
`edgesched build` writes beside each engine (X.layers.json: `{"Layers": [{"Name": ...,
"Metadata": "[ONNX Layer: conv1]\\x1e[ONNX Layer: relu1]"}, ...]}`) names the nodes of each
layer in `Metadata`; where it has none (older TensorRT, LAYER_NAMES_ONLY) the name is split on
" + ". A layer's time is split equally across its nodes (TensorRT does not say more); layers
naming no node of the graph (reformatting layers TensorRT inserts) are left out.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def layer_nodes(layer_info: dict | None) -> dict[str, list[str]]:
    """Engine layer name -> the ONNX node names it covers, from the layer JSON."""
    mapping: dict[str, list[str]] = {}
    for layer in (layer_info or {}).get("Layers", []):
        if isinstance(layer, str):                      # LAYER_NAMES_ONLY: names alone
            mapping[layer] = _split(layer)
            continue
        name = str(layer.get("Name", ""))
        nodes = _ONNX_LAYER.findall(str(layer.get("Metadata") or ""))
        mapping[name] = nodes or _split(name)
    return mapping


def _split(name: str) -> list[str]:
    return [part.strip() for part in name.split(" + ") if part.strip()]


def read_layer_info(engine_path: Path) -> dict | None:
    """The X.layers.json beside an engine (None where build wrote none)."""
    path = Path(engine_path).with_suffix(".layers.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def node_times_us(layer_ms: dict[str, float], layer_info: dict | None,
                  nodes: set[str] | None = None) -> dict[str, float]:
    """ONNX node -> microseconds, from per-layer milliseconds (one run's, or a mean). `nodes`:
    the slice's node names, to drop what is not one (None: keep every name)."""
    mapping = layer_nodes(layer_info)
    out: dict[str, float] = {}
    for layer, ms in layer_ms.items():
        covered = [n for n in mapping.get(layer) or _split(layer)
                   if nodes is None or n in nodes]
        for node in covered:
            out[node] = out.get(node, 0.0) + 1e3 * ms / len(covered)
    return out


def make_profiler(trt):
    """An IProfiler that sums each layer's milliseconds over the runs it sees."""
    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)     # pybind11: the base must be initialized
            self.total_ms: dict[str, float] = {}
            self.runs: dict[str, int] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.total_ms[layer_name] = self.total_ms.get(layer_name, 0.0) + float(ms)
            self.runs[layer_name] = self.runs.get(layer_name, 0) + 1

        def mean_ms(self) -> dict[str, float]:
            return {k: v / self.runs[k] for k, v in self.total_ms.items()}
    return LayerTimes()
