"""The simulated GPU's virtual-clock timing: alone, contended, probes, telemetry, noise."""
from __future__ import annotations

import numpy as np
import pytest

from edgesched.types import Completion, Launch
from tests.sim.sim_backend_helpers import COMPUTE, MEMORY, TINY, drain, make, pair, seconds, start

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
