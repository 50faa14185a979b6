"""The simulated Jetson GPUs: each slice's ground-truth work on a device spec.

The specs live in edgesched.devices (from ../shared/JETSON_FIGURES.md, max power mode). A
slice's work is derived from the ONNX cost model as TensorRT would run it: one kernel per
compute node, with pointwise ops (activations, BatchNorm, residual adds) fused into the kernel
before them and reshapes free.
Each kernel takes launch overhead + max(compute time at the SMs its grid fills, memory time);
the slice keeps compute-bound and memory-bound time apart, because contention stretches them
differently. This is the simulator's own truth: the scheduler never reads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import onnx

from edgesched.devices import SPECS, DeviceSpec  # sim.py and tests import them from here
from edgesched.modelfiles.costmodel import analyze
from edgesched.shapes import ShapeRange

# Ops that TensorRT fuses into the producing kernel's epilogue (pointwise on its output).
FUSED = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                   "BatchNormalization", "Add", "Mul", "Sub", "Div", "Erf", "Sqrt", "Neg",
                   "Dropout", "Identity", "Cast", "PRelu", "Elu", "Exp", "Pow", "Sum"})
# Ops that move no data in TensorRT (views, or shape plumbing folded at build time).
FREE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Constant",
                  "ConstantOfShape", "Concat", "Gather", "Size"})
TILE_OUTPUTS = 1024      # output elements per CTA (TensorRT picks small tiles at batch 1)
CTAS_PER_SM = 2          # resident CTAs per SM for a typical implicit-GEMM conv
WEIGHT_BYTES_SCALE = 0.25   # INT8 weights: a quarter of the FP32 bytes the cost model counts
ACT_BYTES_SCALE = 0.3       # INT8 activations, with some FP16/FP32 islands between layers


def spec_for(device: str) -> DeviceSpec:
    """A shipped spec, or, for a device known only through a measured profile (a CPU, a
    module we have no figures for), a neutral one: slices rebuilt from a profile carry their
    own times, so only stream-priority behaviour is taken from the spec."""
    return SPECS.get(device) or DeviceSpec(device, 1, 0, 1.0, 1.0, 0, 0.0)


@dataclass(frozen=True)
class SliceWork:
    """One slice's solo execution on one device, split by what bounds it."""

    launch_us: float          # kernel launch overhead (neither SMs nor DRAM are the limit)
    compute_us: float         # time in compute-bound kernels
    memory_us: float          # time in memory-bound kernels
    sm: float                 # time-weighted fraction of SMs busy (its grids' fill)
    mem: float                # fraction of peak DRAM bandwidth used over the slice
    kernels: int
    sm_peak: float = 1.0      # SM fill while in its compute-bound kernels
    mem_peak: float = 1.0     # bandwidth fraction while in its memory-bound kernels

    @property
    def duration_us(self) -> float:
        return self.launch_us + self.compute_us + self.memory_us


L2_MISS_WHEN_FITS = 0.2   # share of an L2-sized activation's traffic that still reaches DRAM


@dataclass
class _Kernel:
    ops: float
    weight_bytes: float
    act_bytes: list[float]    # each activation read or written (FP32 sizes, as costed)
    out_elems: float

    def dram_bytes(self, l2_bytes: int) -> float:
        """Weights stream from DRAM; an activation that fits in half the L2 is mostly served
        from it (its producer just wrote it there)."""
        total = self.weight_bytes * WEIGHT_BYTES_SCALE
        for size in self.act_bytes:
            scaled = size * ACT_BYTES_SCALE
            total += scaled * (L2_MISS_WHEN_FITS if scaled <= l2_bytes / 2 else 1.0)
        return total


def _kernels(model: onnx.ModelProto, shapes: Mapping[str, ShapeRange] | None) -> list[_Kernel]:
    report = analyze(model, shapes)
    kernels: list[_Kernel] = []
    for cost in report.nodes:
        if cost.op_type in FREE or (cost.flops == 0 and cost.bytes == 0):
            continue
        out_elems = cost.output_bytes / 4
        if cost.op_type in FUSED and kernels:
            # Fused epilogue: its arithmetic joins the producer; only extra operands (the
            # residual branch of an Add) cost traffic, not the intermediate.
            kernels[-1].ops += cost.flops
            kernels[-1].weight_bytes += cost.weight_bytes
            extra = cost.input_bytes - cost.output_bytes
            if extra > 0:
                kernels[-1].act_bytes.append(float(extra))
            continue
        kernels.append(_Kernel(cost.flops, float(cost.weight_bytes),
                               [float(cost.input_bytes), float(cost.output_bytes)], out_elems))
    return kernels


def slice_work(model: onnx.ModelProto, spec: DeviceSpec,
               shapes: Mapping[str, ShapeRange] | None = None) -> SliceWork:
    """The slice's work with its inputs at their `opt` shapes (`shapes`: input -> range; a
    dynamic input it lacks is a ShapeError). None: dynamic dims as 1, for static graphs and
    tests; the simulator and estimates always pass shapes."""
    launch = compute = memory = busy = traffic = compute_busy = memory_traffic = 0.0
    kernels = _kernels(model, shapes)
    for k in kernels:
        fill = min(1.0, math.ceil(max(k.out_elems, 1) / TILE_OUTPUTS) / (CTAS_PER_SM * spec.sms))
        # A partly filled grid computes on its SMs only and issues loads from them only.
        t_compute = k.ops / (spec.peak_ops * spec.compute_efficiency * fill) * 1e6
        bytes_ = k.dram_bytes(spec.l2_bytes)
        t_memory = bytes_ / (spec.dram_bytes_per_s * spec.memory_efficiency
                             * min(1.0, 2 * fill)) * 1e6
        launch += spec.launch_us
        if t_compute >= t_memory:
            compute += t_compute
            compute_busy += fill * t_compute
        else:
            memory += t_memory
            memory_traffic += bytes_
        busy += fill * max(t_compute, t_memory)
        traffic += bytes_
    run = compute + memory
    total = launch + run
    return SliceWork(launch, compute, memory, busy / run if run else 0.0,
                     min(1.0, traffic / (spec.dram_bytes_per_s * total / 1e6)) if total else 0.0,
                     len(kernels), compute_busy / compute if compute else 0.0,
                     min(1.0, memory_traffic / (spec.dram_bytes_per_s * memory / 1e6))
                     if memory else 0.0)


def work_from_demand(demand) -> SliceWork:
    """A slice rebuilt from its measured profile entry (edgesched.types.SliceDemand), for a
    simulated device made from a profile (`predict`): the compute share stretches with SM
    contention; of the rest, what the measured bandwidth needs at full speed is memory time
    and the remainder is launch time, which neither resource stretches."""
    total = demand.duration_us
    compute = total * demand.compute_share
    memory = min(total - compute, total * demand.mem)
    mem_peak = min(1.0, demand.mem * total / memory) if memory > 0 else 0.0
    return SliceWork(total - compute - memory, compute, memory, demand.sm, demand.mem, 1,
                     demand.sm, mem_peak)
