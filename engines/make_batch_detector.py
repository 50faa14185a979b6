"""Generate engines/batching/detector.onnx: the workload detector with a dynamic batch dim.

engines/workloads/detector.onnx (make_workload_models.py) with its first dimension made
dynamic ("batch") in the input and both outputs, and its two head Reshapes taking the batch
from the tensor (-1) instead of a fixed 1. Same layers, weights and per-image cost: what the
batching workload (configs/workloads/cameras-batching.yaml) sends four cameras into.

    python engines/make_batch_detector.py [--out FILE]

The output is byte-reproducible; tests/unit/test_batching_models.py checks it.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "batching" / "detector.onnx"
BATCH = "batch"


def _workload_models():
    spec = importlib.util.spec_from_file_location("_make_workload_models",
                                                  HERE / "make_workload_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build() -> onnx.ModelProto:
    generator = _workload_models()
    model = generator.build_detector()
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH
    for i, init in enumerate(graph.initializer):
        if init.name.endswith(".rows_shape"):      # [1, rows, per_cell] -> [-1, rows, ...]
            shape = numpy_helper.to_array(init).copy()
            shape[0] = -1
            graph.initializer[i].CopyFrom(numpy_helper.from_array(shape.astype(np.int64),
                                                                  init.name))
    graph.name = "detector_batch"
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(build().SerializeToString(deterministic=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
