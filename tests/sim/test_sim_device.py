"""The simulated Jetsons' ground truth: device specs and each slice's work from the cost model.

The anchor is MLPerf Inference (JETSON_FIGURES.md): ResNet-50 v1.5, INT8, batch 1, p50. The
simulator must land within 15% of it on each device and keep the ratios between devices.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SPECS, SliceWork, slice_work, work_from_demand
from edgesched.types import Launch, SliceDemand

RESNET50 = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
WORKLOAD_MODELS = Path(__file__).resolve().parents[2] / "engines" / "workloads"
# MLPerf Inference SingleStream p50 (ms), ResNet-50 v1.5 INT8, max clocks.
MLPERF_P50_MS = {"orin-agx": 0.636, "orin-nx": 1.078, "xavier-agx": 1.817}
TOLERANCE = 0.15
EPS = 1e-9


@pytest.fixture(scope="module")
def resnet50() -> onnx.ModelProto:
    if not RESNET50.is_file():
        pytest.skip(f"{RESNET50} is not in this onnx package")
    return onnx.load(str(RESNET50))


def simulated_ms(path: Path, device: str) -> float:
    """One solo run on the simulated device (no noise), through the Backend interface."""
    backend = SimBackend(device, 2, noise_sigma=0.0, outputs=False)
    backend.load("m", path, 1)
    backend.stage(1, "m", {})
    backend.launch(Launch(1, "m", 0, 1))
    (done,) = backend.poll(10.0)
    return (done.finished_s - done.started_s) * 1e3


def conv_model(channels_in: int, channels_out: int, size: int, kernel: int = 3,
               group: int = 1, extra: tuple[str, ...] = ()) -> onnx.ModelProto:
    """x[1, cin, size, size] -> Conv (stride 1, same padding) -> each op of `extra` -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((channels_out, channels_in // group, kernel, kernel)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], pads=[kernel // 2] * 4, group=group)]
    for i, op in enumerate(extra):
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"t{len(extra)}"], ["y"]))
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels_in, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels_out, size, size])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def check_consistent(work: SliceWork, device: str) -> None:
    assert work.kernels >= 1
    for value in (work.launch_us, work.compute_us, work.memory_us):
        assert math.isfinite(value) and value >= 0.0
    assert work.duration_us == pytest.approx(work.launch_us + work.compute_us + work.memory_us)
    assert work.launch_us == pytest.approx(work.kernels * SPECS[device].launch_us)
    for fraction in (work.sm, work.mem, work.sm_peak, work.mem_peak):
        assert 0.0 <= fraction <= 1.0 + EPS     # sums in another order may pass 1 by an ulp
    # A phase that does not exist has no peak.
    assert (work.compute_us > 0) or work.sm_peak == 0.0
    assert (work.memory_us > 0) or work.mem_peak == 0.0


# --- the published anchor ------------------------------------------------------------------

@pytest.mark.parametrize("device", sorted(MLPERF_P50_MS))
def test_resnet50_solo_latency_matches_mlperf(resnet50, device):
    published = MLPERF_P50_MS[device]
    simulated = simulated_ms(RESNET50, device)
    assert simulated == pytest.approx(slice_work(resnet50, SPECS[device]).duration_us / 1e3)
    assert abs(simulated / published - 1.0) <= TOLERANCE, (device, simulated, published)


def test_resnet50_device_ordering_and_ratios(resnet50):
    ms = {d: slice_work(resnet50, SPECS[d]).duration_us / 1e3 for d in SPECS}
    assert ms["orin-agx"] < ms["orin-nx"] < ms["xavier-agx"]
    # Orin Nano has the NX's SMs at a lower clock and less bandwidth.
    assert ms["orin-nx"] < ms["orin-nano"]
    published_nx = MLPERF_P50_MS["orin-nx"] / MLPERF_P50_MS["orin-agx"]        # 1.695
    published_xavier = MLPERF_P50_MS["xavier-agx"] / MLPERF_P50_MS["orin-agx"]  # 2.857
    assert abs(ms["orin-nx"] / ms["orin-agx"] / published_nx - 1.0) <= 0.25
    assert abs(ms["xavier-agx"] / ms["orin-agx"] / published_xavier - 1.0) <= 0.25


def test_specs_follow_the_published_figures():
    assert set(SPECS) == {"orin-agx", "orin-nx", "orin-nano", "xavier-agx"}
    figures = {"orin-agx": (16, 1300, 204.8e9), "orin-nx": (8, 918, 102.4e9),
               "orin-nano": (8, 625, 68e9), "xavier-agx": (8, 1377, 136.5e9)}
    for name, (sms, mhz, dram) in figures.items():
        spec = SPECS[name]
        assert (spec.name, spec.sms, spec.gpu_mhz, spec.dram_bytes_per_s) == (name, sms, mhz, dram)
        assert spec.peak_ops > 0 and spec.launch_us > 0


# --- SliceWork -----------------------------------------------------------------------------

@pytest.mark.parametrize("device", sorted(SPECS))
def test_slice_work_fields_are_consistent(resnet50, device):
    works = [slice_work(resnet50, SPECS[device])]
    works += [slice_work(onnx.load(str(p)), SPECS[device])
              for p in sorted(WORKLOAD_MODELS.glob("*.onnx"))]
    assert len(works) >= 2
    for work in works:
        check_consistent(work, device)


@pytest.mark.parametrize("device", sorted(SPECS))
def test_a_bigger_model_costs_more(resnet50, device):
    spec = SPECS[device]
    small = slice_work(conv_model(16, 16, 28), spec)
    wider = slice_work(conv_model(64, 64, 56), spec)
    assert small.duration_us < wider.duration_us < slice_work(resnet50, spec).duration_us
    assert small.compute_us < wider.compute_us
    # depthnet (~22 GFLOPs) needs more of every device than MobileNetV2 (classifier).
    classifier = slice_work(onnx.load(str(WORKLOAD_MODELS / "classifier.onnx")), spec)
    depthnet = slice_work(onnx.load(str(WORKLOAD_MODELS / "depthnet.onnx")), spec)
    assert classifier.duration_us < depthnet.duration_us


@pytest.mark.parametrize("device", sorted(SPECS))
def test_a_tiny_conv_does_not_fill_the_sms(device):
    spec = SPECS[device]
    tiny = slice_work(conv_model(8, 8, 8), spec)          # 512 outputs: one CTA
    check_consistent(tiny, device)
    assert tiny.kernels == 1
    assert tiny.sm < 1.0 and tiny.sm == pytest.approx(1 / (2 * spec.sms))
    big = slice_work(conv_model(64, 64, 56), spec)        # 200k outputs: every SM
    assert big.sm == pytest.approx(1.0) and big.sm_peak == pytest.approx(1.0)


def test_pointwise_ops_fuse_into_their_producer():
    spec = SPECS["orin-agx"]
    bare = slice_work(conv_model(32, 32, 32), spec)
    fused = slice_work(conv_model(32, 32, 32, extra=("Relu", "Sigmoid")), spec)
    assert fused.kernels == bare.kernels == 1
    assert fused.launch_us == bare.launch_us


def test_thin_convs_over_large_activations_are_memory_bound():
    spec = SPECS["orin-nano"]
    depthwise = slice_work(conv_model(64, 64, 256, group=64), spec)   # ~9 ops per output
    assert depthwise.memory_us > depthwise.compute_us
    assert depthwise.mem_peak > 0.5
    dense = slice_work(conv_model(256, 256, 28), spec)                 # ~4.6k ops per output
    assert dense.compute_us > dense.memory_us
    assert dense.mem < depthwise.mem


@pytest.mark.parametrize("demand", [SliceDemand(0.9, 0.3, 500.0, 0.6),
                                    SliceDemand(0.4, 0.8, 120.0, 0.1),
                                    SliceDemand(1.0, 0.2, 300.0)])
def test_work_from_a_measured_demand_keeps_its_time_and_shares(demand):
    work = work_from_demand(demand)
    assert work.duration_us == pytest.approx(demand.duration_us)
    assert work.compute_us == pytest.approx(demand.duration_us * demand.compute_share)
    assert (work.sm, work.mem) == (demand.sm, demand.mem)
    assert 0.0 <= work.mem_peak <= 1.0 + EPS and work.launch_us >= -EPS
    assert work.memory_us == pytest.approx(min(demand.duration_us * (1 - demand.compute_share),
                                               demand.duration_us * demand.mem))
