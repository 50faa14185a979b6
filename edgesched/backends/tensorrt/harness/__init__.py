"""A CUDA harness that needs only cuda-python (and NVRTC): `edgesched selftest --cuda`.

On any NVIDIA GPU it checks what edgesched's TensorRT backend relies on (the primary context,
priority streams, timing and blocking-sync events, zero-copy host memory) and compiles,
launches and times the probe kernels (../probes/): solo at several grid sizes, a co-run
matrix of victim x load (compute and memory probes, several grid sizes each) showing SM and
bandwidth contention, and whether a probe on the high-priority stream keeps its solo time
beside low-priority load. No TensorRT, no pycuda.

  driver.py  the driver calls (cuda-python), the primary context and what is made in it
  bench.py   launching and timing probes: tuning, solo runs, co-runs, the checks that launch
  run.py     the sequence of checks and measurements -> result.Report
  result.py  the report as data (JSON)
"""
from edgesched.backends.tensorrt.harness.bench import Settings
from edgesched.backends.tensorrt.harness.result import Check, Report
from edgesched.backends.tensorrt.harness.run import run

__all__ = ["Check", "Report", "Settings", "run"]
