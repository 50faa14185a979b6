"""The interference predictor: its physical shape, its fit, its error report, its file form."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesched.sched.predictor import (
    FORM,
    Predictor,
    _design,
    fit,
    fit_and_validate,
    holdout_split,
    mape,
)
from edgesched.types import CoRun, SliceDemand

D = SliceDemand
COMPUTE = D(sm=0.9, mem=0.05, duration_us=500.0)
MEMORY = D(sm=0.3, mem=0.85, duration_us=500.0)


def synthetic(truth: Predictor, n: int, *, noise: float = 0.0, seed: int = 1) -> list[CoRun]:
    """n co-runs of 2..4 random slices, slowdowns from `truth`, times lognormal(noise) noise."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        demands = tuple(D(rng.uniform(0.05, 1.0), rng.uniform(0.0, 1.0), rng.uniform(50, 5000))
                        for _ in range(rng.randint(2, 4)))
        slow = tuple(s * math.exp(rng.gauss(0.0, noise)) for s in truth.slowdowns(demands))
        samples.append(CoRun(demands, slow))
    return samples


def coefs(p: Predictor) -> np.ndarray:
    return np.array([p.a, p.b, p.c])


# --- shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [Predictor(), Predictor(3.0, 2.0, 5.0), Predictor(0, 0, 0)])
@pytest.mark.parametrize("d", [COMPUTE, MEMORY, D(1.0, 1.0, 1.0), D(0.0, 0.0, 1.0)])
def test_alone_is_exactly_one(p: Predictor, d: SliceDemand) -> None:
    assert p.slowdowns([d]) == [1.0]
    assert p.slowdown(0, [d]) == 1.0
    assert p.slowdowns([]) == []


def test_two_compute_bound_slices_take_twice_as_long() -> None:
    full = D(sm=1.0, mem=0.0, duration_us=100.0)
    assert Predictor(a=1.0).slowdowns([full, full]) == [2.0, 2.0]
    nearly = D(sm=1.0, mem=0.02, duration_us=100.0)
    assert Predictor(a=1.0).slowdowns([nearly, nearly]) == pytest.approx([2.0, 2.0], abs=0.03)


def test_complementary_pair_slows_far_less_than_two_memory_bound() -> None:
    p = Predictor(a=1.0, b=1.0, c=0.5)
    mixed = max(p.slowdowns([COMPUTE, MEMORY]))
    both_memory = max(p.slowdowns([MEMORY, MEMORY]))
    assert mixed < 1.25
    assert both_memory > 1.6
    assert both_memory - 1.0 > 3 * (mixed - 1.0)


def test_slowdowns_slowdown_and_features_agree() -> None:
    p = Predictor(1.3, 0.7, 2.1)
    for sample in synthetic(Predictor(), 50):
        ds = sample.demands
        fast = p.slowdowns(ds)
        for i in range(len(ds)):
            assert p.slowdown(i, ds) == pytest.approx(fast[i], rel=1e-12)
            assert 1.0 + coefs(p) @ np.array(p.features(i, ds)) == pytest.approx(fast[i], rel=1e-12)


unit = st.floats(0.0, 1.0, allow_nan=False)
demand = st.builds(SliceDemand, sm=unit, mem=unit, duration_us=st.just(100.0))
weight = st.floats(0.0, 10.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(p=st.builds(Predictor, weight, weight, weight),
       demands=st.lists(demand, min_size=1, max_size=4), extra=demand, where=st.integers(0, 4))
def test_adding_a_co_runner_never_reduces_a_slowdown(p: Predictor, demands: list[SliceDemand],
                                                     extra: SliceDemand, where: int) -> None:
    before = p.slowdowns(demands)
    where = min(where, len(demands))
    grown = p.slowdowns(demands[:where] + [extra] + demands[where:])
    after = grown[:where] + grown[where + 1:]
    assert all(s >= 1.0 for s in grown)
    # 1e-12: inserting mid-list changes the float summation order of P_sm, P_mem.
    assert all(b2 >= b1 - 1e-12 for b1, b2 in zip(before, after))


# --- fit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("truth", [Predictor(1.5, 2.0, 0.8), Predictor(0.4, 3.0, 0.0),
                                   Predictor(2.5, 0.0, 1.7)])
def test_fit_recovers_noiseless_coefficients_exactly(truth: Predictor) -> None:
    fitted = fit(synthetic(truth, 60))
    np.testing.assert_allclose(coefs(fitted), coefs(truth), atol=1e-9)


def test_fit_recovers_coefficients_within_a_few_percent_under_3pct_noise() -> None:
    truth = Predictor(1.5, 2.0, 0.8)
    fitted = fit(synthetic(truth, 400, noise=0.03))
    np.testing.assert_allclose(coefs(fitted), coefs(truth), rtol=0.05)


def test_held_out_error_is_small_after_fit_and_large_for_a_wrong_guess() -> None:
    truth = Predictor(4.0, 0.2, 3.0)
    samples = synthetic(truth, 400, noise=0.03, seed=7)
    fitted, held_out_mape = fit_and_validate(samples)
    assert held_out_mape < 0.04          # ~0.024 is the noise floor for 3% lognormal noise
    assert mape(Predictor(), samples) > 0.25
    assert mape(truth, samples) == pytest.approx(held_out_mape, abs=0.01)


def test_coefficients_stay_non_negative_when_data_pulls_them_negative() -> None:
    # Memory-bound slices measured *faster* the more bandwidth is oversubscribed: unconstrained
    # least squares answers with a negative coefficient; the physical fit must not.
    rng = random.Random(3)
    samples = []
    for _ in range(80):
        ds = tuple(D(rng.uniform(0.1, 1.0), rng.uniform(0.0, 1.0), 100.0) for _ in range(3))
        shape = Predictor(0, 0, 0)
        slow = tuple(max(1.0, 1.0 + 1.5 * fa - 0.8 * fb + 0.1 * fc)
                     for fa, fb, fc in (shape.features(i, ds) for i in range(3)))
        samples.append(CoRun(ds, slow))
    x, y = _design(samples)
    unconstrained, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert unconstrained.min() < -0.1
    fitted = fit(samples)
    beta = coefs(fitted)
    assert beta.min() >= 0.0
    # KKT: it is the NNLS optimum, not merely clamped. Free coefficients have zero gradient;
    # those held at 0 have a gradient that points into the infeasible side.
    grad = x.T @ (x @ beta - y)
    for j in range(3):
        if beta[j] > 0:
            assert abs(grad[j]) < 1e-9
        else:
            assert grad[j] >= -1e-9


def test_a_term_the_data_never_exercises_keeps_its_default() -> None:
    # Pairs whose SM demands sum below 1 never oversubscribe the SMs: `a` is unidentifiable,
    # and fitting it to 0 would teach the scheduler that SM contention is free.
    truth = Predictor(5.0, 2.0, 0.5)
    rng = random.Random(4)
    samples = []
    for _ in range(40):
        ds = tuple(D(rng.uniform(0.0, 0.45), rng.uniform(0.0, 1.0), 1.0) for _ in range(2))
        samples.append(CoRun(ds, tuple(truth.slowdowns(ds))))
    fitted = fit(samples)
    assert fitted.a == Predictor().a
    assert (fitted.b, fitted.c) == pytest.approx((2.0, 0.5))


def test_fit_without_usable_rows_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        fit([])
    with pytest.raises(ValueError):
        fit([CoRun((COMPUTE,), (1.0,)), CoRun((MEMORY,), (1.02,))])
    with pytest.raises(ValueError):
        fit([CoRun((COMPUTE, MEMORY), (math.nan, 0.0))])
    with pytest.raises(ValueError, match="2 demands but 1 slowdowns"):
        fit([CoRun((COMPUTE, MEMORY), (1.1,))])
    with pytest.raises(ValueError):
        mape(Predictor(), [])


# --- file form and validation ------------------------------------------------------------

def test_json_round_trip() -> None:
    p = fit(synthetic(Predictor(1.5, 2.0, 0.8), 40))
    d = json.loads(json.dumps(p.to_json()))
    assert d["form"] == FORM
    assert Predictor.from_json(d) == p
    assert Predictor.from_json({"form": FORM, "a": 1, "b": 0, "c": 2}) == Predictor(1.0, 0.0, 2.0)


@pytest.mark.parametrize("bad", [
    None, [], "sm-mem-cache/1", {}, {"a": 1.0, "b": 1.0, "c": 0.0},
    {"form": "other/2", "a": 1.0, "b": 1.0, "c": 0.0},
    {"form": FORM, "a": 1.0, "b": 1.0},
    {"form": FORM, "a": "1", "b": 1.0, "c": 0.0},
    {"form": FORM, "a": True, "b": 1.0, "c": 0.0},
    {"form": FORM, "a": -0.5, "b": 1.0, "c": 0.0},
    {"form": FORM, "a": 1.0, "b": float("nan"), "c": 0.0},
    {"form": FORM, "a": 1.0, "b": 1.0, "c": float("inf")},
])
def test_bad_json_is_a_one_line_value_error(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        Predictor.from_json(bad)
    assert "\n" not in str(info.value)


def test_holdout_split_is_deterministic_disjoint_and_complete() -> None:
    samples = synthetic(Predictor(), 40)
    fit_part, held = holdout_split(samples, 0.25, seed=5)
    again = holdout_split(samples, 0.25, seed=5)
    assert (fit_part, held) == again
    assert len(held) == 10 and len(fit_part) == 30
    ids_fit, ids_held = {id(s) for s in fit_part}, {id(s) for s in held}
    assert not ids_fit & ids_held
    assert ids_fit | ids_held == {id(s) for s in samples}
    assert holdout_split(samples, 0.25, seed=6) != (fit_part, held)
    with pytest.raises(ValueError):
        holdout_split(samples, 1.0)
    with pytest.raises(ValueError):
        fit_and_validate(samples[:1])
