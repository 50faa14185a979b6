"""TensorRT: the only package that imports tensorrt and pycuda (lazily, inside the functions and
the constructor using them; cuda_streams.py holds the driver-API calls).

build.py builds engines from ONNX slices (`edgesched build`; calibrator.py: INT8 calibration;
tags.py: what built each engine); runtime.py is `TensorRTBackend`, which serves them in the
device's shared primary CUDA context (context.py), loading them through loading.py (tags,
DLA cores) into slices.py (execution contexts, optimization profiles). One code path covers
TensorRT 8.6, 10.x and 11 (the APIs named in ../shared/REFERENCE.md).
"""
from edgesched.backends.tensorrt.build import (
    WORKSPACE_BYTES,
    BuildOptions,
    EngineBuildError,
    available,
    build_engine,
    is_quantized,
    precision_notes,
    version,
)
from edgesched.backends.tensorrt.runtime import (
    ENGINE_SUFFIXES,
    TensorRTBackend,
    device_report,
)

__all__ = ["ENGINE_SUFFIXES", "WORKSPACE_BYTES", "BuildOptions", "EngineBuildError",
           "TensorRTBackend", "available", "build_engine", "device_report", "is_quantized",
           "precision_notes", "version"]
