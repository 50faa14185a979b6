"""Profiling through the Backend interface recovers the simulator's hidden truth.

The simulator (noise off) has a SliceWork per slice that the scheduler must never read;
measure_profile sees only launches, probes and telemetry. What it measures must match that
truth, and the predictor it fits must explain co-runs it did not fit on.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SliceWork
from edgesched.commands.measure import measure_profile
from edgesched.modelfiles.slicing import slice_model
from edgesched.sched.predictor import Predictor, mape
from edgesched.sched.profile import PROFILE_VERSION, Profile
from edgesched.types import CoRun, Launch, ModelInfo, Priority, SliceDemand, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "orin-nx"
SPEC = TensorSpec("x", "float32", (1,))
# Hand-built slices: (launch, compute, memory us, sm, mem, kernels, sm_peak, mem_peak).
HAND_BUILT = {
    "dense": [SliceWork(30.0, 900.0, 70.0, 0.95, 0.15, 10, 1.0, 0.6)],
    "half": [SliceWork(30.0, 800.0, 170.0, 0.45, 0.2, 10, 0.5, 0.7),
             SliceWork(20.0, 400.0, 80.0, 0.7, 0.1, 5, 0.75, 0.5)],
    "stream": [SliceWork(30.0, 60.0, 910.0, 0.15, 0.75, 10, 0.3, 0.85)],
}
SHIPPED = {"segmenter": 3, "depthnet": 3, "classifier": 2}   # model -> slices


def info(name: str, slices: int) -> ModelInfo:
    return ModelInfo(name, (SPEC,), (SPEC,), slices, 100.0, Priority.BEST_EFFORT, 1)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[SimBackend, Profile]:
    """A noise-free simulated Orin NX with hand-built and shipped (sliced) models, profiled."""
    backend = SimBackend(DEVICE, 4, seed=0, noise_sigma=0.0)
    models = {}
    for name, works in HAND_BUILT.items():
        models[name] = info(name, backend.load_work(name, works, (SPEC,), (SPEC,)).num_slices)
    root = tmp_path_factory.mktemp("sliced")
    for name, parts in SHIPPED.items():
        slice_model(ROOT / "engines" / "workloads" / f"{name}.onnx", parts, root / name, name=name)
        models[name] = info(name, backend.load(name, root / name, 1).num_slices)
    profile = measure_profile(backend, models, DEVICE, runs=3, pairs=60, seed=0)
    return backend, profile


def truth(backend: SimBackend, model: str, index: int) -> SliceWork:
    return backend._work[model][index]          # the test may peek; the scheduler may not


def every_slice(profile: Profile):
    for model, demands in profile.demands.items():
        for i, demand in enumerate(demands):
            yield model, i, demand


def close(measured_value: float, true_value: float, rel: float, floor: float = 0.0) -> bool:
    return abs(measured_value - true_value) <= max(rel * abs(true_value), floor)


# --- per-slice demands ------------------------------------------------------------------------

def test_every_slice_is_profiled(measured):
    backend, profile = measured
    assert profile.device == DEVICE
    assert {m: len(d) for m, d in profile.demands.items()} == {
        **{m: len(w) for m, w in HAND_BUILT.items()}, **SHIPPED}
    for _, _, d in every_slice(profile):
        assert 0.0 <= d.sm <= 1.0 and 0.0 <= d.mem <= 1.0 and d.duration_us > 0
        assert d.compute_frac is not None and 0.0 <= d.compute_frac <= 1.0


def test_duration_is_the_solo_time(measured):
    backend, profile = measured
    for model, i, d in every_slice(profile):
        assert close(d.duration_us, truth(backend, model, i).duration_us, 0.02), (model, i)


def test_mem_is_the_bandwidth_share(measured):
    backend, profile = measured
    for model, i, d in every_slice(profile):
        assert close(d.mem, truth(backend, model, i).mem, 0.15, 0.03), (model, i, d)


def test_sm_is_the_sm_fill_of_compute_heavy_slices(measured):
    backend, profile = measured
    checked = 0
    for model, i, d in every_slice(profile):
        work = truth(backend, model, i)
        if work.compute_us / work.duration_us >= 0.3 and work.sm_peak >= 0.3:
            assert close(d.sm, work.sm_peak, 0.15), (model, i, d, work)
            checked += 1
    assert checked >= 5
    half = profile.demands["half"]
    assert half[0].sm == pytest.approx(0.5, rel=0.15)          # a half-filled grid is seen
    assert half[1].sm == pytest.approx(0.75, rel=0.15)


def test_compute_frac_is_the_share_that_sm_contention_stretches(measured):
    backend, profile = measured
    for model, i, d in every_slice(profile):
        work = truth(backend, model, i)
        assert close(d.compute_frac, work.compute_us / work.duration_us, 0.15, 0.03), \
            (model, i, d, work)


# --- the predictor ----------------------------------------------------------------------------

def co_run(backend: SimBackend, a: tuple[str, int], b: tuple[str, int],
           ids: iter) -> tuple[float, float]:
    """First-run seconds of a and b started together; whichever ends first is relaunched
    until the other's first run is over, so both first runs are fully overlapped."""
    slices = {1: a, 2: b}
    first: dict[int, float] = {}
    running = 0

    def launch(stream: int) -> None:
        nonlocal running
        rid = next(ids)
        backend.stage(rid, slices[stream][0], {})
        backend.launch(Launch(rid, *slices[stream], stream))
        running += 1
    launch(1)
    launch(2)
    while running:
        for c in backend.poll(1.0):
            running -= 1
            backend.release(c.launch.request_id)
            first.setdefault(c.launch.stream, c.finished_s - c.started_s)
            if len(first) < 2:
                launch(c.launch.stream)
    return first[1], first[2]


def fresh_co_runs(backend: SimBackend, profile: Profile, n: int, seed: int) -> list[CoRun]:
    rng = random.Random(seed)
    ids = iter(range(5_000_000, 6_000_000))
    slices = [(m, i) for m, i, _ in every_slice(profile)]
    samples = []
    for _ in range(n):
        a, b = rng.choice(slices), rng.choice(slices)
        ta, tb = co_run(backend, a, b, ids)
        da, db = profile.demand(*a), profile.demand(*b)
        samples.append(CoRun((da, db), (ta * 1e6 / da.duration_us, tb * 1e6 / db.duration_us)))
    return samples


def test_the_fitted_predictor_explains_held_out_co_runs(measured):
    backend, profile = measured
    held_out = profile.meta["predictor_mape"]
    assert profile.meta["pairs"] == 60
    assert held_out is not None and 0.0 <= held_out < 0.15, held_out
    assert profile.predictor != Predictor()                     # fitted, not the default
    fresh = fresh_co_runs(backend, profile, 40, seed=99)
    assert any(max(s.slowdowns) > 1.2 for s in fresh)           # the sample has contention
    error = mape(profile.predictor, fresh)
    print(f"predictor MAPE: held out {held_out:.3f}, fresh co-runs {error:.3f}")
    assert error < 0.15, error


def test_profiling_is_deterministic(tmp_path):
    def once() -> Profile:
        backend = SimBackend(DEVICE, 4, seed=5)                 # with noise
        models = {n: info(n, backend.load_work(n, w).num_slices) for n, w in HAND_BUILT.items()}
        return measure_profile(backend, models, DEVICE, runs=3, pairs=12, seed=2)
    assert once() == once()


def test_without_pairs_the_predictor_keeps_its_default_form():
    backend = SimBackend(DEVICE, 4, seed=0, noise_sigma=0.0)
    models = {n: info(n, backend.load_work(n, w).num_slices) for n, w in HAND_BUILT.items()}
    seen: list[str] = []
    profile = measure_profile(backend, models, DEVICE, runs=2, pairs=0, progress=seen.append)
    assert seen == list(HAND_BUILT)
    assert profile.predictor == Predictor()
    assert profile.meta["pairs"] == 0 and profile.meta["predictor_mape"] is None
    assert profile.demands["dense"][0].duration_us == pytest.approx(1000.0)


def test_a_memory_bound_slice_that_fills_the_sms_is_not_profiled_as_free_of_sm_pressure():
    """A streaming slice whose memory-bound kernels keep every SM occupied slows a compute-
    bound co-runner ~2x in the simulator. Probes see that the streaming slice itself is not
    slowed by SM contention (compute_frac ~0), but the profile also records sm ~0, so the
    predictor calls the pair complementary and the scheduler would co-run them."""
    backend = SimBackend(DEVICE, 4, seed=0, noise_sigma=0.0)
    works = {"dense": HAND_BUILT["dense"], "half": HAND_BUILT["half"],
             "stream": HAND_BUILT["stream"],
             "fullstream": [SliceWork(30.0, 0.0, 970.0, 1.0, 0.8, 10, 0.0, 0.85)]}
    models = {n: info(n, backend.load_work(n, w).num_slices) for n, w in works.items()}
    profile = measure_profile(backend, models, DEVICE, runs=3, pairs=40, seed=0)
    (dense_s, _) = co_run(backend, ("dense", 0), ("fullstream", 0), iter(range(10**7, 10**8)))
    measured_slowdown = dense_s * 1e6 / profile.demand("dense", 0).duration_us
    predicted = profile.predictor.slowdowns([profile.demand("dense", 0),
                                             profile.demand("fullstream", 0)])[0]
    assert measured_slowdown > 1.5
    assert abs(predicted - measured_slowdown) / measured_slowdown < 0.25, (
        f"dense beside fullstream: simulated {measured_slowdown:.2f}x, predicted "
        f"{predicted:.2f}x from profile sm={profile.demand('fullstream', 0).sm:.2f} "
        f"(the slice keeps {works['fullstream'][0].sm:.0%} of the SMs busy)")


# --- the file form ----------------------------------------------------------------------------

def test_profile_json_round_trip(measured, tmp_path):
    _, profile = measured
    text = json.dumps(profile.to_json())
    again = Profile.from_json(json.loads(text))
    assert again == profile
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile
    raw = json.loads((tmp_path / "profile.json").read_text())
    assert raw["version"] == PROFILE_VERSION and raw["device"] == DEVICE
    assert set(raw["models"]) == set(profile.demands)


def test_an_unmeasured_compute_frac_survives_the_round_trip():
    profile = Profile("orin-nano", {"m": (SliceDemand(0.5, 0.2, 100.0),)}, Predictor(1, 2, 3),
                      {"note": "by hand"})
    again = Profile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile and again.demand("m", 0).compute_frac is None
    assert again.demand("m", 1) is None and again.demand("other", 0) is None


def good() -> dict:
    return Profile("orin-nx", {"m": (SliceDemand(0.5, 0.2, 100.0, 0.6),)}).to_json()


def broken(change) -> dict:
    raw = good()
    change(raw)
    return raw


@pytest.mark.parametrize("raw", [
    None, [], "profile", {},
    broken(lambda r: r.update(version=2)),
    broken(lambda r: r.pop("version")),
    broken(lambda r: r.pop("models")),
    broken(lambda r: r.pop("device")),
    broken(lambda r: r.pop("predictor")),
    broken(lambda r: r.update(models=[1, 2])),
    broken(lambda r: r["models"].update(m=[{"sm": 0.5, "mem": 0.2}])),
    broken(lambda r: r["models"].update(m=[{"sm": None, "mem": 0.2, "duration_us": 1.0}])),
    broken(lambda r: r["models"].update(m=[{"sm": "lots", "mem": 0.2, "duration_us": 1.0}])),
    broken(lambda r: r["models"].update(m=[7])),
    broken(lambda r: r["predictor"].update(form="linear/0")),
    broken(lambda r: r["predictor"].update(a=-1.0)),
    broken(lambda r: r["predictor"].update(b=True)),
    broken(lambda r: r.update(predictor=[1, 2, 3])),
], ids=lambda raw: json.dumps(raw)[:60])
def test_a_bad_profile_is_a_value_error(raw):
    with pytest.raises(ValueError):
        Profile.from_json(raw)


@pytest.mark.parametrize("field, value", [
    ("duration_us", -100.0), ("duration_us", math.nan), ("duration_us", math.inf),
    ("sm", -0.5), ("mem", math.nan), ("compute_frac", 2.0),
])
def test_a_profile_with_impossible_demands_is_a_value_error(field, value):
    """A corrupt or hand-edited profile must not reach the scheduler: a NaN duration makes
    every deadline comparison false (never rejected, always admitted)."""
    raw = good()
    raw["models"]["m"][0][field] = value
    with pytest.raises(ValueError, match=field):
        Profile.from_json(json.loads(json.dumps(raw)))


def test_a_profile_file_that_is_not_json_is_a_value_error(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ValueError):
        Profile.load(tmp_path / "p.json")
