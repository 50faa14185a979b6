"""Probe kernels: CUDA C sources shipped in this package, compiled at run time (NVRTC) for the
device's compute capability.

`compute` (compute_probe.cu) keeps FP32 pipes busy with no memory traffic; `memory`
(memory_probe.cu) streams arrays far larger than L2. Both do a fixed amount of work per block,
so a probe's SM footprint is its grid: grid / (SMs x blocks per SM) of the thread slots, and its
duration is set by `iterations` / `rounds`, or held for a time by `spin_cycles`.

PARAMS below is the one place the Python side states each kernel's parameter list (names and
ctypes types, in order); tests check it against the `extern "C"` signatures in the .cu files.
`pack` turns keyword values into the ((values), (ctypes types)) pair that cuda-python's
cuLaunchKernel takes as kernelParams, refusing a missing or extra name.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from importlib import resources

BLOCK_THREADS = 256            # threads per block for both probes (8 warps)
FLOAT4_BYTES = 16
BYTES_PER_ELEMENT = 2 * FLOAT4_BYTES   # memory probe: one float4 read + one written
FLOP_PER_ROUND = 16 * 8 * 2            # compute probe: 16 steps x 8 chains x (mul + add)


@dataclass(frozen=True)
class ProbeKernel:
    kind: str                                  # "compute" | "memory"
    file: str                                  # the .cu file in this package
    entry: str                                 # its extern "C" __global__ function
    params: tuple[tuple[str, type], ...]       # (name, ctypes type), in the kernel's order

    def source(self) -> bytes:
        return resources.files(__package__).joinpath(self.file).read_bytes()

    def pack(self, **values) -> tuple[tuple, tuple]:
        """kernelParams for cuLaunchKernel: ((values...), (ctypes types...)) in order."""
        names = [name for name, _ in self.params]
        if sorted(values) != sorted(names):
            raise TypeError(f"{self.entry} takes {', '.join(names)}; got {', '.join(values)}")
        return tuple(values[n] for n in names), tuple(t for _, t in self.params)


COMPUTE = ProbeKernel("compute", "compute_probe.cu", "compute_probe", (
    ("out", ctypes.c_void_p),              # float*: written only if the result were -1
    ("iterations", ctypes.c_int),          # rounds of 256 FLOP per thread
    ("spin_cycles", ctypes.c_longlong),    # 0, or keep going until this many SM cycles
))
MEMORY = ProbeKernel("memory", "memory_probe.cu", "memory_probe", (
    ("src", ctypes.c_void_p),              # const float4*, n4 elements
    ("dst", ctypes.c_void_p),              # float4*, n4 elements
    ("n4", ctypes.c_longlong),             # elements (float4s) in each array
    ("offset4", ctypes.c_longlong),        # where this launch starts, < n4
    ("per_thread", ctypes.c_int),          # elements per thread per round
    ("rounds", ctypes.c_int),              # rounds of blockDim.x * per_thread per block
    ("spin_cycles", ctypes.c_longlong),    # 0, or keep streaming until this many SM cycles
))
PROBES: dict[str, ProbeKernel] = {p.kind: p for p in (COMPUTE, MEMORY)}


def sources() -> list[str]:
    """Every .cu file shipped in this package (CI compiles each for Xavier and Orin)."""
    return sorted(p.name for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".cu"))


__all__ = ["BLOCK_THREADS", "BYTES_PER_ELEMENT", "COMPUTE", "FLOAT4_BYTES", "FLOP_PER_ROUND",
           "MEMORY", "PROBES", "ProbeKernel", "sources"]
