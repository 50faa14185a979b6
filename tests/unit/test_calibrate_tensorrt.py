"""`edgesched calibrate` on the TensorRT backend, end to end against the fakes: TensorRT, pycuda
and libcuda/cuda-python from tests/fakes_cuda, the probe kernels' driver and NVRTC from
tests/fakes_cuda_probes, joined as one device (tests/fakes_cuda/probes_bridge.py), and a
telemetry reader that reports fixed GPU load and EMC utilization."""
from __future__ import annotations

import contextlib
import json

import pytest

from edgesched.backends.tensorrt import probing
from edgesched.commands.calibrate import calibrate, report
from edgesched.config import parse_config
from edgesched.sched.profile import Profile
from edgesched.telemetry import OPENERS, TelemetrySample
from edgesched.types import TelemetrySource
from tests import fakes_cuda
from tests.fakes_cuda.probes_bridge import install_probes
from tests.fakes_cuda.tensorrt_runtime import write_engine
from tests.unit.tensorrt_helpers import MODEL

SLICE_US = (300.0, 700.0)      # the fake engines' virtual device times
# slice 0's layers as its engine reports them to an IProfiler, and its layer JSON: a fused
# layer naming two ONNX nodes in Metadata, and one named after its node alone
LAYERS = [("conv + relu", 200.0), ("fc", 100.0)]
LAYER_INFO = {"Layers": [{"Name": "conv + relu", "LayerType": "CaskConvolution",
                          "Metadata": "[ONNX Layer: conv]\x1e[ONNX Layer: relu]"},
                         {"Name": "fc", "LayerType": "CaskGemm"}]}


class FixedReader:
    name = "sysfs"

    def __init__(self):
        self.closed = False

    def read(self) -> TelemetrySample:
        import time
        return TelemetrySample(time.monotonic(), gpu_load_pct=60.0, emc_util_pct=30.0,
                               gpu_freq_mhz=918.0, emc_freq_mhz=3199.0, nvpmodel="MAXN",
                               jetson_clocks=True)

    def close(self) -> None:
        self.closed = True


def timed_model(directory):
    """two_slice_model's graph (y = x + 11), with virtual device times per slice."""
    from edgesched.modelfiles.manifest import Manifest, SliceEntry, write_manifest
    from edgesched.types import TensorSpec
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (src, dst, add) in enumerate([("x", "h", 1.0), ("h", "y", 10.0)]):
        (directory / f"slice_{index:02d}.onnx").write_bytes(b"")
        engine = f"slice_{index:02d}.engine"
        write_engine(directory / engine, f"slice_{index:02d}", {src: ("float32", (1, 4))},
                     {dst: ("float32", (1, 4), src, add)}, duration_us=SLICE_US[index],
                     layers=LAYERS if index == 0 else None)
        if index == 0:
            (directory / "slice_00.layers.json").write_text(json.dumps(LAYER_INFO))
        entries.append(SliceEntry(index, f"slice_{index:02d}.onnx", (src,), (dst,), {}, engine))
    write_manifest(Manifest(MODEL, "twostep.onnx", (TensorSpec("x", "float32", (1, 4)),),
                            (TensorSpec("y", "float32", (1, 4)),), tuple(entries), directory))
    return directory


@pytest.fixture
def stack(monkeypatch, tmp_path):
    """The fakes installed, telemetry replaced, short windows; checks everything at the end."""
    fake = fakes_cuda.install(monkeypatch)
    probes = install_probes(monkeypatch, fake.gpu)
    readers: list[FixedReader] = []

    def opener(root):
        readers.append(FixedReader())
        return readers[-1]
    monkeypatch.setitem(OPENERS, TelemetrySource.SYSFS, opener)
    monkeypatch.setattr(probing, "MIN_WINDOW_S", 0.15)
    monkeypatch.setattr(probing, "SAMPLE_INTERVAL_S", 0.02)
    config = parse_config({
        "device": {"backend": "tensorrt", "module": "orin-agx", "streams": 3},
        "scheduler": {"policy": "interference"}, "telemetry": "sysfs",
        "models": [{"name": MODEL, "path": str(timed_model(tmp_path / "m")), "slo_ms": 50}]},
        "cal.yaml", tmp_path)
    yield fake, probes, config, readers
    fake.gpu.check_quiescent()
    assert fake.gpu.violations == []
    assert fakes_cuda.check_balanced(fake.gpu) == []
    assert probes.violations == []
    assert probes.leftovers() == []
    assert all(r.closed for r in readers)


def test_calibrate_on_tensorrt_produces_a_valid_profile(stack, tmp_path):
    fake, probes, config, _ = stack
    profile = calibrate(config, runs=3, pairs=6, seed=0, root=tmp_path)
    assert profile.device == "tensorrt:orin-agx" and profile.meta["backend"] == "tensorrt"
    demands = profile.demands[MODEL]
    assert len(demands) == 2
    # durations are the fake's event-timed device times, not host time
    assert [d.duration_us for d in demands] == [pytest.approx(us) for us in SLICE_US]
    for d in demands:
        assert 0 <= d.sm <= 1 and 0 <= d.mem <= 1 and 0 <= d.compute_frac <= 1
        assert d.mem == pytest.approx(0.30)                # EMC from telemetry
    # the compute probes slowed the slices (probes_bridge): compute demand was measured
    assert all(d.compute_frac > 0.5 for d in demands)
    assert profile.meta["versions"]["tensorrt"] == "10.3.0"
    assert profile.meta["nvpmodel"] == "MAXN" and profile.meta["jetson_clocks"] is True
    path = tmp_path / "profile.json"
    profile.save(path)
    assert Profile.load(path) == profile
    assert "held-out error" in report(profile)
    # per-node times: the fused layer's 200 us split across its two nodes; slice 1 has no
    # layer JSON, so its one layer keeps its TensorRT name
    assert profile.meta["node_us"][MODEL] == {
        "conv": pytest.approx(100.0), "relu": pytest.approx(100.0), "fc": pytest.approx(100.0),
        "slice_01/layer0": pytest.approx(700.0)}
    assert all(c.profiler is None for c in fake.gpu.contexts)      # detached after


def test_probes_run_on_their_own_least_priority_streams_and_are_stopped(stack, tmp_path):
    fake, probes, config, _ = stack
    calibrate(config, runs=3, pairs=2, seed=0, root=tmp_path)
    gpu = probes.gpu
    assert gpu.kernels, "no probe kernel ran"
    least = gpu.spec.priority_range[0]
    assert {gpu.streams[k.stream].priority for k in gpu.kernels} == {least}
    per_sm = 6                                     # the fake's occupancy: 1536 threads / 256
    grids = {k.grid for k in gpu.kernels if k.kind == "compute"}
    assert grids == {gpu.spec.sms * per_sm, round(0.75 * gpu.spec.sms * per_sm)}
    # every chunk was waited for before calibration ended: nothing left on the timeline
    assert max(k.end for k in gpu.kernels) <= gpu.now
    # the slices' own launches carried timing events (BLOCKING_SYNC, timing on)
    assert all(e.flags == fakes_cuda.BLOCKING_SYNC for e in fake.gpu.events.values())
    assert fake.gpu.named("cuEventElapsedTime")


def test_solo_windows_last_the_telemetry_minimum(stack, tmp_path):
    fake, _, config, _ = stack
    calibrate(config, runs=1, pairs=0, seed=0, root=tmp_path)
    # each slice ran solo for >= MIN_WINDOW_S (0.15 s here), so far more than `runs` times
    executes = [c.args[0] for c in fake.gpu.named("execute_async_v3")]
    assert executes.count("slice_00") > 20


def test_layer_names_map_to_onnx_nodes():
    from edgesched.backends.tensorrt.layers import layer_nodes, node_times_us
    info = {"Layers": [{"Name": "a + b + c", "Metadata": ""}, "d + e",
                       {"Name": "Reformatting CopyNode for Input Tensor 0 to a"}]}
    assert layer_nodes(info)["a + b + c"] == ["a", "b", "c"]
    got = node_times_us({"a + b + c": 0.3, "d + e": 0.1,
                         "Reformatting CopyNode for Input Tensor 0 to a": 0.05},
                        info, nodes={"a", "b", "c", "d", "e"})
    assert got == {k: pytest.approx(v) for k, v in
                   {"a": 100.0, "b": 100.0, "c": 100.0, "d": 50.0, "e": 50.0}.items()}


def test_the_fake_profiler_is_as_strict_as_the_binding(stack):
    import sys
    trt = sys.modules["tensorrt"]

    class Forgot(trt.IProfiler):
        def __init__(self):        # never calls IProfiler.__init__: pybind11 refuses it
            self.x = 1
    with _pushed(stack[0]):
        context = _context(trt)
    with pytest.raises(TypeError):
        context.profiler = Forgot()
    with pytest.raises(TypeError):
        context.profiler = object()
    with _pushed(stack[0]):          # its destructor frees device memory: in the context
        del context


def _context(trt):
    from tests.fakes_cuda.tensorrt_runtime import engine_blob
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(
        engine_blob("e", {"x": ("float32", (1, 4))}, {"y": ("float32", (1, 4), "x", 1.0)}))
    return engine.create_execution_context()


@contextlib.contextmanager
def _pushed(fake):
    """The primary context retained and current, as the backend has it around TensorRT calls."""
    fake.gpu.ctx_push(fakes_cuda.PRIMARY_HANDLE)
    fake.gpu.retains += 1
    try:
        yield
    finally:
        fake.gpu.retains -= 1
        fake.gpu.ctx_pop()
