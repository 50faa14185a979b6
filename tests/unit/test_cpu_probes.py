"""CPU calibration probes and telemetry, and the ONNX Runtime backend's probe hooks.

No test asserts a wall-clock figure: waits are bounded loops, and the one timing comparison
(a compute probe slows a CPU-bound model) compares medians of interleaved runs.
"""
from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgesched.backends import cpu_probes
from edgesched.backends.cpu_probes import CpuProbe
from edgesched.telemetry import procstat
from edgesched.telemetry.procstat import CpuTimes, parse_proc_stat
from edgesched.types import Launch, ModelInfo, Priority

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "engines" / "examples"
SMALL_STREAM = 8 << 20          # keep memory probes small in tests

STAT_A = """\
cpu  1000 20 300 5000 40 0 10 5 7 0
cpu0 500 10 150 2500 20 0 5 3 4 0
cpu1 500 10 150 2500 20 0 5 2 3 0
intr 123456 0 0
ctxt 99999
btime 1700000000
"""
# 400 busy ticks and 600 idle/iowait/steal ticks later, over both cores
STAT_B = """\
cpu  1300 20 380 5580 50 0 30 15 9 0
cpu0 650 10 190 2790 25 0 15 8 5 0
cpu1 650 10 190 2790 25 0 15 7 4 0
intr 123999 0 0
"""


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(cpu_probes.THREAD_PREFIX)]


def wait_for(condition, limit_s: float = 20.0) -> bool:
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(autouse=True)
def small_stream_arrays(monkeypatch):
    monkeypatch.setattr(cpu_probes, "stream_array_bytes", lambda threads: SMALL_STREAM)
    yield
    assert wait_for(lambda: not probe_threads()), "a test left probe threads running"


# --- /proc/stat ----------------------------------------------------------------------------

def test_parse_proc_stat_aggregate_line():
    t = parse_proc_stat(STAT_A)
    # busy = user + nice + system + irq + softirq; total adds idle, iowait, steal (not guest)
    assert t == CpuTimes(1000 + 20 + 300 + 0 + 10, 1330 + 5000 + 40 + 5, 2)


def test_parse_proc_stat_old_kernel_and_bad_input():
    assert parse_proc_stat("cpu 10 0 5 85\ncpu0 10 0 5 85\n") == CpuTimes(15, 100, 1)
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1 2 3\n")
    with pytest.raises(ValueError):
        parse_proc_stat("cpu 1 2\n")
    with pytest.raises(ValueError):
        parse_proc_stat("cpu 1 x 3 4\n")


def test_busy_fraction_between_readings():
    a, b = parse_proc_stat(STAT_A), parse_proc_stat(STAT_B)
    assert procstat.busy_fraction(a, b) == pytest.approx(400 / 1000)
    assert procstat.busy_fraction(a, a) == 0.0
    assert procstat.busy_fraction(None, b) == 0.0
    assert procstat.resolves(a, b)                    # 1000 ticks over 2 cores
    assert not procstat.resolves(a, a)


def test_read_cpu_times_under_a_root(tmp_path):
    assert procstat.read_cpu_times(tmp_path) is None             # no proc/stat there
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("garbage\n")
    assert procstat.read_cpu_times(tmp_path) is None
    (tmp_path / "proc" / "stat").write_text(STAT_A)
    assert procstat.read_cpu_times(tmp_path) == parse_proc_stat(STAT_A)


def test_busy_window_on_fixture_files(tmp_path):
    (tmp_path / "proc").mkdir()
    stat = tmp_path / "proc" / "stat"
    stat.write_text(STAT_A)
    window = procstat.BusyWindow(tmp_path)
    stat.write_text(STAT_B)
    assert window.read() == pytest.approx(0.4)
    # no ticks since: too short for /proc/stat, so this process's own CPU time is used
    assert 0.0 <= window.read() <= 1.0


# --- probe footprints and threads ------------------------------------------------------------

def test_thread_duties_are_core_shares():
    assert cpu_probes.thread_duties(0.0, 2) == []
    assert cpu_probes.thread_duties(1.0, 2) == [1.0, 1.0]
    assert cpu_probes.thread_duties(0.75, 2) == [1.0, pytest.approx(0.5)]
    assert cpu_probes.thread_duties(0.1, 2) == [pytest.approx(0.2)]    # at least one thread
    assert cpu_probes.thread_duties(0.01, 16) == [pytest.approx(0.16)]
    assert len(cpu_probes.thread_duties(1.0, 12)) == 12
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            cpu_probes.thread_duties(bad, 2)


def test_stream_arrays_are_sized_to_the_machine(monkeypatch):
    monkeypatch.undo()                      # the real sizing, not the test's small arrays
    size = cpu_probes.stream_array_bytes(2)
    assert size % cpu_probes.CHUNK_BYTES == 0
    assert cpu_probes.CHUNK_BYTES <= size <= cpu_probes.MAX_STREAM_BYTES
    assert cpu_probes.last_level_cache_bytes() > 0


def test_compute_probe_counts_flops_and_stops():
    probe = CpuProbe(1.0, 0.0, 30.0, cores=2).start()
    assert len(probe.threads) == 2 and probe.running
    assert wait_for(lambda: probe.stats().ops >= 4)
    stats = probe.stop()
    assert not probe.running and not any(t.is_alive() for t in probe.threads)
    assert stats.ops >= 4 and stats.flops == stats.ops * cpu_probes.FLOPS_PER_OP
    assert stats.bytes_moved == 0 and stats.gflops > 0
    assert probe.stop() == stats                                # idempotent, totals frozen


def test_memory_probe_counts_bytes_and_stops():
    probe = CpuProbe(0.0, 0.5, 30.0, cores=2, stream_bytes=SMALL_STREAM).start()
    assert len(probe.threads) == 1
    assert wait_for(lambda: probe.stats().ops >= 4)
    stats = probe.stop()
    assert not probe.running
    assert stats.bytes_moved == stats.ops * 2 * cpu_probes.CHUNK_BYTES and stats.gbs > 0
    assert stats.flops == 0


def test_mixed_probe_with_duty_cycled_threads():
    probe = CpuProbe(0.75, 0.25, 30.0, cores=2, stream_bytes=SMALL_STREAM).start()
    assert len(probe.threads) == 3                    # 1 full + 1 half compute, 1 half memory
    assert wait_for(lambda: probe.stats().ops >= 6)
    stats = probe.stop()
    assert stats.flops > 0 and stats.bytes_moved > 0
    assert not probe_threads()


def test_probe_ends_by_itself_at_its_safety_cap():
    probe = CpuProbe(0.5, 0.5, 0.05, cores=2, stream_bytes=SMALL_STREAM).start()
    assert wait_for(lambda: not probe.running)
    assert not probe_threads()
    assert probe.stop().ops >= 2                      # stopping an ended probe is harmless


def test_quick_self_calibration_reports_throughput():
    calibration = cpu_probes.calibrate(seconds=0.05, cores=2)
    assert calibration.cores == 2
    assert calibration.compute_gflops > 0 and calibration.stream_gbs > 0
    assert "GFLOP/s" in str(calibration) and not probe_threads()


# --- the ONNX Runtime backend ----------------------------------------------------------------

@pytest.fixture()
def ort_backend_class():
    pytest.importorskip("onnxruntime")
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend


def run_many(backend, model: str, inputs: dict, n: int, stream: int = 0,
             ids=itertools.count(1)) -> tuple[float, list]:
    """n runs queued back to back on one stream: (first start to last end, completions)."""
    rids = [next(ids) for _ in range(n)]
    for rid in rids:
        backend.stage(rid, model, inputs)
        backend.launch(Launch(rid, model, 0, stream))
    done: list = []
    while len(done) < n:
        done += backend.poll(5.0)
    for c in done:
        assert c.error is None, c.error
    outputs = [backend.fetch(rid) for rid in rids]
    return max(c.finished_s for c in done) - min(c.started_s for c in done), outputs


def random_inputs(loaded, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal([d or 1 for d in t.shape]).astype(t.dtype)
            for t in loaded.inputs}


def test_backend_probes_start_and_stop(ort_backend_class):
    backend = ort_backend_class(1)
    try:
        key = backend.launch_probe(1.0, 0.0, 30.0)
        assert isinstance(key, int) and probe_threads()
        backend.stop_probe(key)
        assert not probe_threads()
        backend.stop_probe(key)                                    # idempotent
        backend.stop_probe(12345)                                  # unknown: ignored
        with pytest.raises(ValueError):
            backend.launch_probe(1.5, 0.0, 1.0)
        with pytest.raises(ValueError):
            backend.launch_probe(0.5, 0.0, 0.0)
        assert not probe_threads()
    finally:
        backend.close()


def test_close_stops_running_probes(ort_backend_class):
    backend = ort_backend_class(2)
    backend.launch_probe(0.5, 0.0, 30.0)
    backend.launch_probe(0.0, 0.5, 30.0)
    assert len(probe_threads()) == 2
    backend.close()
    assert not probe_threads()


def test_backend_probe_ends_at_its_safety_cap(ort_backend_class):
    backend = ort_backend_class(1)
    try:
        key = backend.launch_probe(1.0, 0.0, 0.05)
        assert wait_for(lambda: not probe_threads())
        backend.stop_probe(key)
        backend.stop_probe(backend.launch_probe(0.5, 0.0, 30.0))   # reaps the ended one too
        assert not probe_threads()
    finally:
        backend.close()


def test_telemetry_reads_proc_stat_under_root(ort_backend_class, tmp_path):
    (tmp_path / "proc").mkdir()
    stat = tmp_path / "proc" / "stat"
    stat.write_text(STAT_A)
    backend = ort_backend_class(1, root=tmp_path)
    try:
        stat.write_text(STAT_B)
        assert backend.telemetry() == (pytest.approx(0.4), 0.0)
    finally:
        backend.close()


def test_telemetry_fractions_on_this_machine(ort_backend_class):
    backend = ort_backend_class(1)
    try:
        for busy, bandwidth in (backend.telemetry(), backend.telemetry()):
            assert 0.0 <= busy <= 1.0 and bandwidth == 0.0     # no memory probe: nothing seen
        key = backend.launch_probe(0.0, 1.0, 30.0)
        start = backend.telemetry()[1]
        assert 0.0 <= start <= 1.0
        seen: list[tuple[float, float]] = []
        assert wait_for(lambda: seen.append(backend.telemetry()) or seen[-1][1] > 0)
        for busy, bandwidth in seen:
            assert 0.0 <= busy <= 1.0 and 0.0 <= bandwidth <= 1.0
        backend.stop_probe(key)
        backend.telemetry()                                        # the window the probe ended in
        assert backend.telemetry()[1] == 0.0
    finally:
        backend.close()


def test_probes_leave_requests_alone(ort_backend_class):
    backend = ort_backend_class(1)
    try:
        loaded = backend.load("convnet", EXAMPLES / "convnet.onnx", 1)
        inputs = random_inputs(loaded)
        _, alone = run_many(backend, "convnet", inputs, 2)
        key = backend.launch_probe(1.0, 1.0, 30.0)
        try:
            _, probed = run_many(backend, "convnet", inputs, 2)
        finally:
            backend.stop_probe(key)
        for a, b in zip(alone, probed):
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    finally:
        backend.close()


def test_compute_probe_slows_a_cpu_bound_model(ort_backend_class):
    """The model runs on every core it may use; a probe on all cores shares each of them."""
    cores = cpu_probes.cpu_count()
    backend = ort_backend_class(1, threads_per_stream=min(cores, 4))
    try:
        loaded = backend.load("convnet", EXAMPLES / "convnet.onnx", 1)
        inputs = random_inputs(loaded)
        run_many(backend, "convnet", inputs, 5)                   # warm up
        alone, probed = [], []
        for _ in range(5):                                         # interleaved: drift hits both
            alone.append(run_many(backend, "convnet", inputs, 10)[0])
            key = backend.launch_probe(1.0, 0.0, 30.0)
            try:
                probed.append(run_many(backend, "convnet", inputs, 10)[0])
            finally:
                backend.stop_probe(key)
        ratio = statistics.median(probed) / statistics.median(alone)
        print(f"convnet, {min(cores, 4)} threads: {ratio:.2f}x slower beside a compute probe")
        assert ratio > 1.0
    finally:
        backend.close()


def test_calibration_inputs_for_unstaged_tensors(ort_backend_class):
    """A request staged with no tensors (how profiling stages its runs) runs on zeros, even a
    later slice alone; one staged with tensors still needs all of them."""
    backend = ort_backend_class(1)
    try:
        loaded = backend.load("sliced", EXAMPLES / "convnet_sliced", 1)
        assert loaded.num_slices == 3
        for index in range(loaded.num_slices):
            backend.stage(100 + index, "sliced", {})
            backend.launch(Launch(100 + index, "sliced", index, 0))
            (done,) = backend.poll(30.0)
            assert done.error is None
            backend.release(100 + index)
        backend.stage(200, "sliced", random_inputs(loaded))
        backend.launch(Launch(200, "sliced", 1, 0))                # slice 0's outputs missing
        (done,) = backend.poll(30.0)
        assert done.error is not None and "KeyError" in done.error
        backend.release(200)
    finally:
        backend.close()


def test_measure_profile_on_onnxruntime(ort_backend_class):
    from edgesched.commands.measure import measure_profile

    errors: list[str] = []

    class Watched(ort_backend_class):
        def poll(self, timeout_s):
            done = super().poll(timeout_s)
            errors.extend(c.error for c in done if c.error)
            return done

    backend = Watched(3)            # profiling co-runs pairs on streams 1 and 2
    try:
        loaded = backend.load("sliced", EXAMPLES / "convnet_sliced", 1)
        models = {"sliced": ModelInfo("sliced", loaded.inputs, loaded.outputs,
                                      loaded.num_slices, 100.0, Priority.BEST_EFFORT, 1)}
        profile = measure_profile(backend, models, "cpu", runs=2, pairs=2, seed=0)
    finally:
        backend.close()
    assert not errors                                  # every run really ran its slice
    assert not probe_threads()
    assert profile.device == "cpu" and list(profile.demands) == ["sliced"]
    assert len(profile.demands["sliced"]) == 3
    for demand in profile.demands["sliced"]:
        assert math.isfinite(demand.duration_us) and demand.duration_us > 0
        assert 0.0 <= demand.sm <= 1.0 and 0.0 <= demand.mem <= 1.0
        assert demand.compute_frac is not None and 0.0 <= demand.compute_frac <= 1.0


def test_backend_self_calibration(ort_backend_class):
    backend = ort_backend_class(1)
    try:
        calibration = backend.calibrate_probes(seconds=0.05)
        assert calibration.compute_gflops > 0 and calibration.stream_gbs > 0
        assert not probe_threads()
    finally:
        backend.close()
