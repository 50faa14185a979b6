"""The simulated GPU behind the Backend protocol: fluid contention on a virtual clock.

Jobs are built by hand as SliceWork so every expectation follows from the documented model:
SMs shared (stream 0 favoured), DRAM bandwidth shared by all, a cache/EMC term, noise.
Nothing here waits on the wall clock except the real-time tests, which assert only on
what poll returns and in which order, never on how long it took.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgesched.backends.base import Backend
from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SliceWork
from edgesched.errors import ModelLoadError
from edgesched.types import Completion, Launch, SliceDemand, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
# 1 ms alone each. Compute-bound: fills the SMs, little traffic. Memory-bound: most of the
# bandwidth, few SMs. (launch, compute, memory, sm, mem, kernels, sm_peak, mem_peak)
COMPUTE = SliceWork(10.0, 990.0, 0.0, 1.0, 0.05, 1, 1.0, 0.0)
MEMORY = SliceWork(10.0, 0.0, 990.0, 0.2, 0.8, 1, 0.0, 0.9)
TINY = SliceWork(10.0, 90.0, 0.0, 0.1, 0.01, 1, 0.1, 0.0)        # 0.1 ms, 10% of the SMs
OUT = TensorSpec("y", "float32", (None, 3))
IN = TensorSpec("x", "float32", (1, 4))


def make(streams: int = 4, *, seed: int = 0, noise_sigma: float = 0.0,
         **kw) -> SimBackend:
    backend = SimBackend("orin-nx", streams, seed=seed, noise_sigma=noise_sigma, **kw)
    for name, work in (("compute", COMPUTE), ("memory", MEMORY), ("tiny", TINY)):
        backend.load_work(name, [work], (IN,), (OUT,))
    backend.load_work("two", [COMPUTE, MEMORY], (IN,), (OUT,))
    return backend


def start(backend: SimBackend, rid: int, model: str, stream: int, index: int = 0) -> Launch:
    launch = Launch(rid, model, index, stream)
    if index == 0:
        backend.stage(rid, model, {})
    backend.launch(launch)
    return launch


def drain(backend: SimBackend, polls: int = 1000, timeout_s: float = 1.0
          ) -> dict[int, Completion]:
    """Poll until no launch is running; request id -> its completion."""
    done: dict[int, Completion] = {}
    for _ in range(polls):
        if not any(j.launch for j in backend._jobs.values()):
            return done
        for c in backend.poll(timeout_s):
            assert c.launch.request_id not in done
            done[c.launch.request_id] = c
    raise AssertionError("launches still running after many polls")


def seconds(c: Completion) -> float:
    return c.finished_s - c.started_s


def pair(a: str, b: str, streams: tuple[int, int] = (1, 2)) -> tuple[float, float]:
    """Slowdowns of a and b started together (each over its own solo time)."""
    backend = make()
    start(backend, 1, a, streams[0])
    start(backend, 2, b, streams[1])
    done = drain(backend)
    solo = {"compute": COMPUTE, "memory": MEMORY, "tiny": TINY}
    return (seconds(done[1]) / (solo[a].duration_us / 1e6),
            seconds(done[2]) / (solo[b].duration_us / 1e6))


def test_it_implements_the_backend_protocol():
    backend = make()
    for name in ("name", "num_streams", "load", "stage", "launch", "poll", "fetch", "release",
                 "wake", "close"):
        assert hasattr(backend, name), name
    assert backend.name == "sim" and backend.num_streams == 4
    _: Backend = backend


# --- alone -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [0, 1, 3])
@pytest.mark.parametrize("model, work", [("compute", COMPUTE), ("memory", MEMORY),
                                         ("tiny", TINY)])
def test_a_lone_slice_takes_its_solo_time(stream, model, work):
    backend = make()
    start(backend, 1, model, stream)
    (c,) = backend.poll(10.0)
    assert c.error is None and c.launch == Launch(1, model, 0, stream)
    assert seconds(c) == pytest.approx(work.duration_us / 1e6, rel=1e-12)
    assert backend.now() == c.finished_s


def test_poll_with_nothing_running_advances_the_clock_by_the_timeout():
    backend = make()
    assert backend.now() == 0.0
    assert backend.poll(0.25) == []
    assert backend.now() == 0.25
    assert backend.poll(0.0) == [] and backend.poll(-1.0) == []
    assert backend.now() == 0.25


def test_completions_are_on_the_virtual_clock():
    backend = make()
    backend.poll(0.5)
    start(backend, 1, "compute", 1)
    assert backend.poll(0.0002) == []                 # 0.2 ms of 1 ms: not done yet
    assert backend.now() == pytest.approx(0.5002)
    (c,) = backend.poll(1.0)                          # runs to its end, not to the timeout
    assert c.started_s == 0.5
    assert c.finished_s == pytest.approx(0.5 + COMPUTE.duration_us / 1e6, rel=1e-12)
    assert backend.now() == c.finished_s


def test_polling_in_small_steps_does_not_change_the_result():
    coarse, fine = make(), make()
    for backend in (coarse, fine):
        start(backend, 1, "compute", 1)
        start(backend, 2, "memory", 2)
    by_coarse = drain(coarse, timeout_s=1.0)
    by_fine = drain(fine, polls=10_000, timeout_s=0.00007)
    for rid in (1, 2):
        assert by_fine[rid].finished_s == pytest.approx(by_coarse[rid].finished_s, rel=1e-9)


def test_simultaneous_ends_are_reported_together():
    backend = make()
    start(backend, 1, "tiny", 1)
    start(backend, 2, "tiny", 2)
    done = backend.poll(1.0)
    assert sorted(c.launch.request_id for c in done) == [1, 2]
    assert done[0].finished_s == done[1].finished_s


# --- contention ------------------------------------------------------------------------------

def test_two_memory_bound_jobs_slow_each_other_more_than_a_complementary_pair():
    mem_a, mem_b = pair("memory", "memory")
    comp, mem = pair("compute", "memory")
    assert mem_a > 1.5 and mem_b > 1.5                # bandwidth oversubscribed 1.6x + cache
    assert max(comp, mem) < min(mem_a, mem_b)
    assert comp + mem < mem_a + mem_b
    assert mem < 1.1                                  # little of the compute job's traffic


def test_two_compute_bound_jobs_on_normal_streams_both_slow():
    a, b = pair("compute", "compute")
    assert a > 1.5 and b > 1.5
    assert a == pytest.approx(b)


def test_small_jobs_that_fit_in_the_sms_together_do_not_slow():
    a, b = pair("tiny", "tiny")
    assert a == pytest.approx(1.0) and b == pytest.approx(1.0)


def test_the_high_priority_stream_is_slowed_less_than_a_normal_one():
    high, _ = pair("compute", "compute", streams=(0, 2))
    normal, _ = pair("compute", "compute", streams=(1, 2))
    assert 1.0 < high < normal
    # Bandwidth knows no stream priority: memory-bound work on stream 0 gains nothing.
    mem_high, _ = pair("memory", "memory", streams=(0, 2))
    mem_normal, _ = pair("memory", "memory", streams=(1, 2))
    assert mem_high == pytest.approx(mem_normal)


# --- probes and telemetry ---------------------------------------------------------------------

def test_a_compute_probe_slows_a_compute_bound_slice_and_stops_when_told():
    backend = make()
    probe = backend.launch_probe(1.0, 0.0, 10.0)
    start(backend, 1, "compute", 1)                   # probes do not take a launch stream
    slowed = seconds(backend.poll(1.0)[0])
    backend.stop_probe(probe)
    backend.stop_probe(probe)                         # idempotent
    start(backend, 2, "compute", 1)
    alone = seconds(backend.poll(1.0)[0])
    assert alone == pytest.approx(COMPUTE.duration_us / 1e6)
    assert slowed > 1.5 * alone


def test_a_memory_probe_slows_a_memory_bound_slice_more_than_a_compute_bound_one():
    slowdowns = {}
    for model, work in (("memory", MEMORY), ("compute", COMPUTE)):
        backend = make()
        probe = backend.launch_probe(0.0, 0.8, 10.0)
        start(backend, 1, model, 1)
        slowdowns[model] = seconds(backend.poll(1.0)[0]) / (work.duration_us / 1e6)
        backend.stop_probe(probe)
    assert slowdowns["memory"] > 1.5
    assert slowdowns["compute"] < 1.1


@pytest.mark.parametrize("model, work", [("compute", COMPUTE), ("memory", MEMORY)])
def test_telemetry_reports_the_emc_utilisation_of_what_ran(model, work):
    backend = make()
    backend.poll(0.1)
    backend.telemetry()                               # a fresh window from here
    start(backend, 1, model, 1)
    backend.poll(1.0)
    sm, emc = backend.telemetry()
    assert emc == pytest.approx(work.mem)
    assert sm == pytest.approx(work.sm)
    start(backend, 2, model, 1)                       # then as long again idle: half of it
    backend.poll(1.0)
    backend.poll(work.duration_us / 1e6)
    sm, emc = backend.telemetry()
    assert emc == pytest.approx(work.mem / 2)
    assert backend.telemetry() == (0.0, 0.0)          # an empty window


def test_telemetry_sees_a_probe():
    backend = make()
    backend.telemetry()
    probe = backend.launch_probe(0.5, 0.6, 10.0)
    backend.poll(0.2)
    assert backend.telemetry() == pytest.approx((0.5, 0.6))
    backend.stop_probe(probe)
    backend.poll(0.2)
    assert backend.telemetry() == (0.0, 0.0)


# --- noise and determinism -------------------------------------------------------------------

def noisy_run(seed: int) -> list[tuple[int, float, float]]:
    """Five rounds of three co-running slices with noise: (request id, start, finish)."""
    backend = make(seed=seed, noise_sigma=0.03)
    done: dict[int, Completion] = {}
    rid = 0
    for _ in range(5):
        for stream, model in ((0, "compute"), (1, "memory"), (2, "tiny")):
            rid += 1
            start(backend, rid, model, stream)
        done.update(drain(backend))
    return [(rid, c.started_s, c.finished_s) for rid, c in sorted(done.items())]


def test_same_seed_same_times_and_another_seed_other_times():
    first, again, other = noisy_run(7), noisy_run(7), noisy_run(8)
    assert len(first) == 15
    assert first == again
    assert first != other
    assert [r[0] for r in first] == [r[0] for r in other]


def test_noise_scatters_a_lone_slice_around_its_solo_time():
    backend = make(seed=3, noise_sigma=0.03)
    times = []
    for rid in range(200):
        start(backend, rid, "compute", 1)
        times.append(seconds(backend.poll(1.0)[0]) / (COMPUTE.duration_us / 1e6))
    assert len(set(times)) == len(times)
    assert 0.98 < float(np.median(times)) < 1.02
    assert 0.01 < float(np.std(np.log(times))) < 0.05


# --- tensors and bookkeeping ----------------------------------------------------------------

def test_fetch_returns_zeros_of_the_output_shapes():
    backend = make()
    start(backend, 1, "compute", 1)
    backend.poll(1.0)
    out = backend.fetch(1)
    assert list(out) == ["y"]
    assert out["y"].shape == (1, 3) and out["y"].dtype == np.float32
    assert not out["y"].any()
    assert backend._staged == {}


def test_fetch_without_outputs_returns_nothing():
    backend = make(outputs=False)
    start(backend, 1, "compute", 1)
    backend.poll(1.0)
    assert backend.fetch(1) == {}
    assert backend._staged == {}


def test_release_leaves_nothing_staged_and_is_idempotent():
    backend = make()
    for rid in (1, 2):
        backend.stage(rid, "compute", {})
    backend.release(1)
    backend.release(1)
    backend.release(99)                               # never staged: nothing to do
    assert backend._staged == {2: "compute"}
    backend.release(2)
    assert backend._staged == {}


def test_a_multi_slice_model_runs_its_slices_in_turn():
    backend = make()
    start(backend, 1, "two", 1, index=0)
    (first,) = backend.poll(1.0)
    start(backend, 1, "two", 2, index=1)
    (second,) = backend.poll(1.0)
    assert seconds(first) == pytest.approx(COMPUTE.duration_us / 1e6)
    assert seconds(second) == pytest.approx(MEMORY.duration_us / 1e6)
    assert second.started_s == first.finished_s


def test_launching_on_a_busy_stream_raises():
    backend = make()
    start(backend, 1, "compute", 1)
    with pytest.raises(RuntimeError, match="stream 1"):
        start(backend, 2, "memory", 1)
    start(backend, 3, "memory", 2)                    # another stream is fine
    assert sorted(drain(backend)) == [1, 3]


def test_close_drops_running_work():
    backend = make()
    start(backend, 1, "compute", 1)
    backend.close()
    assert backend.poll(1.0) == []


# --- loading ---------------------------------------------------------------------------------

def test_loads_a_sliced_directory_with_its_manifest():
    backend = SimBackend("orin-nano", 2, noise_sigma=0.0)
    loaded = backend.load("convnet", ROOT / "engines/examples/convnet_sliced", 1)
    assert loaded.num_slices == 3
    assert [t.name for t in loaded.inputs] == ["image"]
    assert [t.name for t in loaded.outputs] == ["logits"]
    backend.stage(1, "convnet", {})
    for i in range(3):
        backend.launch(Launch(1, "convnet", i, 1))
        (c,) = backend.poll(1.0)
        assert seconds(c) > 0
    assert backend.fetch(1)["logits"].shape == (1, 10)


def test_a_model_built_from_its_profile_runs_at_the_measured_times():
    backend = make()
    demands = [SliceDemand(0.9, 0.3, 500.0, 0.6), SliceDemand(0.4, 0.8, 120.0)]
    loaded = backend.load_profiled("profiled", demands, (IN,), (OUT,))
    assert loaded.num_slices == 2 and loaded.outputs == (OUT,)
    start(backend, 1, "profiled", 1, index=0)
    (first,) = backend.poll(1.0)
    start(backend, 1, "profiled", 1, index=1)
    (second,) = backend.poll(1.0)
    assert seconds(first) == pytest.approx(500e-6) and seconds(second) == pytest.approx(120e-6)


def test_loads_a_single_onnx_file():
    backend = SimBackend("orin-agx", 2)
    loaded = backend.load("convnet", ROOT / "engines/examples/convnet.onnx", 1)
    assert loaded.num_slices == 1 and loaded.inputs and loaded.outputs


@pytest.mark.parametrize("make_path", [
    lambda tmp: tmp / "missing.onnx",
    lambda tmp: tmp,                                                  # no manifest.json
    lambda tmp: (tmp / "junk.onnx").write_bytes(b"\x00not a model") and tmp / "junk.onnx",
])
def test_a_bad_model_path_is_one_clear_error(tmp_path, make_path):
    backend = SimBackend("orin-agx", 2)
    path = make_path(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        backend.load("m", path, 1)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_an_unknown_device_is_refused():
    with pytest.raises(ModelLoadError, match="jetson-tx2.*orin-agx"):
        SimBackend("jetson-tx2", 2)


# --- real time (serving on the simulated device) --------------------------------------------

GENEROUS_S = 5.0         # hang protection only


def poll_in_thread(backend: SimBackend, timeout_s: float) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(backend.poll(timeout_s)), daemon=True)
    thread.start()
    return thread, got


def wake_until_done(backend: SimBackend, thread: threading.Thread, limit_s: float) -> None:
    end = time.monotonic() + limit_s
    while thread.is_alive() and time.monotonic() < end:
        backend.wake()
        thread.join(0.02)


def test_realtime_wake_ends_a_waiting_poll():
    backend = make(realtime=True)
    thread, got = poll_in_thread(backend, 60.0)
    try:
        wake_until_done(backend, thread, GENEROUS_S)
        assert not thread.is_alive(), "wake() did not end the poll"
        assert got == [[]]
    finally:
        wake_until_done(backend, thread, 60.0)


def test_realtime_a_wake_just_before_poll_is_not_lost():
    """The engine checks its inbox, then polls; a submission (and its wake) landing between
    the two must still end the poll, or the request waits out the whole poll timeout."""
    backend = make(realtime=True)
    backend.wake()
    thread, got = poll_in_thread(backend, 60.0)
    try:
        thread.join(GENEROUS_S)
        assert not thread.is_alive(), "a wake() just before poll() was lost"
        assert got == [[]]
    finally:
        wake_until_done(backend, thread, 60.0)


def test_realtime_poll_returns_the_completion_when_due():
    backend = make(realtime=True)
    start(backend, 1, "compute", 1)                   # 1 ms
    got = []
    for _ in range(3):                                # one poll should do; hang protection
        got += backend.poll(GENEROUS_S)
        if got:
            break
    assert [c.launch.request_id for c in got] == [1]
    assert got[0].finished_s > got[0].started_s
    assert backend.now() >= got[0].finished_s


def wait_past(backend: SimBackend, seconds_: float) -> None:
    """Let the wall clock pass `seconds_` beyond the simulator's clock (no poll meanwhile)."""
    end = backend.now() + seconds_
    while time.monotonic() < end:
        time.sleep(seconds_ / 4)


def collect(backend: SimBackend, rids: set[int]) -> set[int]:
    got: set[int] = set()
    for _ in range(40):
        got |= {c.launch.request_id for c in backend.poll(0.05)}
        if got >= rids:
            break
    return got


def test_realtime_a_completion_due_before_the_poll_is_reported():
    """The engine may be busy when a slice ends: the next poll must still report it."""
    backend = make(realtime=True)
    start(backend, 1, "compute", 1)                   # 1 ms
    wait_past(backend, 0.02)
    assert collect(backend, {1}) == {1}


def test_realtime_a_launch_starts_when_it_is_made():
    """After an idle spell with no poll, a launch starts at the wall clock's now, not at the
    time of the last poll (which would shorten its simulated latency by the idle time)."""
    backend = make(realtime=True)
    wait_past(backend, 0.02)
    before = time.monotonic()
    start(backend, 1, "compute", 1)
    got = []
    for _ in range(40):
        got += backend.poll(0.05)
        if got:
            break
    assert [c.launch.request_id for c in got] == [1]
    assert got[0].started_s >= before


def test_realtime_two_completions_close_together_are_both_reported():
    backend = make(realtime=True)
    backend.load_work("later", [SliceWork(11.0, 90.0, 0.0, 0.1, 0.01, 1, 0.1, 0.0)])
    start(backend, 1, "tiny", 1)                      # 100 us
    start(backend, 2, "later", 2)                     # 101 us: due by the next poll
    assert collect(backend, {1, 2}) == {1, 2}
