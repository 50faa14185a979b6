"""Measure what a reload under the memory budget costs on ONNX Runtime: a model loaded from the
bytes kept in host RAM (what serve/residency.py does after an eviction) against one loaded from
its file, with the file's pages in the page cache and dropped from it (a cold read).

The models are onnx's "light" test networks (onnx/backend/test/data/light: the real ResNet-50,
DenseNet-121 and SqueezeNet graphs whose weights are ConstantOfShape nodes), with the weights
materialized as initializers by ONNX Runtime's basic optimizations, so the files have their
real sizes (ResNet-50: 102 MB).

    python engines/measure_reload.py [--repeat 7] [--work /tmp/edgesched-reload]

Prints one line per model and way: the median load time (ms) over the repeats, and the
footprint the backend measured (MiB, backends/ort_footprint.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

MODELS = ("squeezenet", "densenet121", "resnet50")


def materialize(work: Path) -> list[Path]:
    import onnx
    import onnxruntime as ort

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MODELS:
        out = work / f"{name}.onnx"
        if not out.exists():
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(out)
            options.log_severity_level = 3
            ort.InferenceSession(str(light / f"light_{name}.onnx"), options,
                                 providers=["CPUExecutionProvider"])
        paths.append(out)
    return paths


def drop_from_page_cache(path: Path) -> None:
    """Evict the file's clean pages (posix_fadvise DONTNEED; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    from edgesched.backends.blobs import Blobs
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgesched-reload"))
    args = parser.parse_args()
    backend = OnnxRuntimeBackend(1)
    ways = ("disk, cold", "disk, page cache", "host RAM")
    try:
        for path in materialize(args.work):
            kept = Blobs()
            kept.read(path)                               # kept from an earlier load
            times = {way: [] for way in ways}
            footprints = []
            # The ways take turns within each repeat, so background load hits them alike.
            for _ in range(args.repeat):
                for way in ways:
                    backend.blobs = kept if way == "host RAM" else None
                    if way == "disk, cold":
                        drop_from_page_cache(path)
                    began = time.perf_counter()
                    backend.load("m", path, 1)
                    times[way].append((time.perf_counter() - began) * 1e3)
                    footprints.append(backend.footprint_bytes("m") / 2**20)
                    backend.unload("m")
            for way in ways:
                print(f"{path.stem:12s} {path.stat().st_size / 1e6:6.1f} MB  {way:16s} "
                      f"load {statistics.median(times[way]):7.1f} ms (median of "
                      f"{args.repeat}), footprint {statistics.median(footprints):6.1f} MiB")
    finally:
        backend.close()


if __name__ == "__main__":
    main()
