"""SLO-aware batching decisions as pure functions (sched/batching.py) on hand-built values."""
from __future__ import annotations

import random

import numpy as np
import pytest

from edgesched.sched import batching
from edgesched.shapes import ShapeError, ShapeRange
from edgesched.types import BatchConfig, ModelInfo, Priority, TensorSpec


def linear(per_row_s: float, fixed_s: float = 0.0):
    return lambda rows: fixed_s + per_row_s * rows


def test_the_largest_batch_that_keeps_every_deadline_is_chosen():
    # 1 ms fixed + 1 ms per row; now 0: 2 rows finish at 3 ms, 3 at 4 ms, 4 at 5 ms.
    latency = linear(1e-3, 1e-3)
    deadlines = [0.010, 0.0045, 0.010, 0.010]
    # a batch of 3 would finish at 4 ms <= 4.5 ms; 4 at 5 ms breaks member 1's deadline
    assert batching.batch_size(deadlines, [1, 1, 1, 1], latency, 0.0, 8) == 3
    assert batching.batch_size([0.010] * 4, [1, 1, 1, 1], latency, 0.0, 8) == 4
    assert batching.batch_size([0.010] * 4, [1, 1, 1, 1], latency, 0.0, 2) == 2   # the limit
    assert batching.batch_size([0.010] * 3, [2, 2, 2], latency, 0.0, 5) == 2      # rows count


def test_a_member_that_misses_even_alone_does_not_stop_the_others():
    latency = linear(1e-3, 1e-3)
    # member 1 cannot finish by 1 ms even alone (2 ms): the others may still batch
    assert batching.batch_size([0.010, 0.001, 0.010], [1, 1, 1], latency, 0.0, 8) == 3


def test_unknown_latency_batches_nothing():
    assert batching.batch_size([1.0, 1.0], [1, 1], lambda rows: None, 0.0, 8) == 1


def test_no_batch_the_predictor_chooses_breaks_a_deadline_it_could_keep():
    rng = random.Random(7)
    for _ in range(2000):
        n = rng.randint(1, 8)
        rows = [rng.randint(1, 3) for _ in range(n)]
        fixed, per_row = rng.uniform(0, 2e-3), rng.uniform(1e-4, 3e-3)
        latency = linear(per_row, fixed)
        now = rng.uniform(0, 1)
        deadlines = [now + rng.uniform(0, 0.02) for _ in range(n)]
        limit = rng.randint(1, 12)
        chosen = batching.batch_size(deadlines, rows, latency, now, limit)
        finish = now + latency(sum(rows[:chosen]))
        assert chosen == 1 or sum(rows[:chosen]) <= limit
        for d, r in zip(deadlines[:chosen], rows[:chosen]):
            assert finish <= d or now + latency(r) > d


def test_a_short_batch_waits_only_where_configured_and_the_slack_allows():
    latency = linear(1e-3)
    # arrived at 0, 5 ms wait configured, deadline 20 ms: waits until 5 ms
    assert batching.hold_until(0.0, 0.005, [0.020], 1, 4, latency, 0.001) == 0.005
    assert batching.hold_until(0.0, 0.0, [0.020], 1, 4, latency, 0.001) is None   # no wait_ms
    assert batching.hold_until(0.0, 0.005, [0.006], 1, 4, latency, 0.001) is None  # no slack
    assert batching.hold_until(0.0, 0.005, [0.020], 4, 4, latency, 0.001) is None  # full
    assert batching.hold_until(0.0, 0.005, [0.020], 1, 4, latency, 0.005) is None  # waited


def test_latency_by_rows_interpolates_and_extrapolates_pessimistically():
    table = batching.BatchLatency({"m": {1: 0.010, 4: 0.016}})
    assert table.seconds("m", 1) == 0.010
    assert table.seconds("m", 2) == pytest.approx(0.012)
    assert table.seconds("m", 8) == pytest.approx(0.032)     # per row, as the largest
    assert table.seconds("other", 2) is None
    table.observe("m", 2, 1.0)                               # measured beats observed
    assert table.seconds("m", 2) == pytest.approx(0.012)


def test_observed_latency_is_learned_where_nothing_was_measured():
    table = batching.BatchLatency()
    assert table.seconds("m", 1) is None
    table.observe("m", 1, 0.010)
    assert table.seconds("m", 3) == pytest.approx(0.030)     # linear from the one known size
    table.observe("m", 3, 0.020)
    assert table.seconds("m", 3) == pytest.approx(0.020)
    assert table.seconds("m", 2) == pytest.approx(0.015)


IMAGE = TensorSpec("image", "float32", (None, 3, 8, 8))
LOGITS = TensorSpec("logits", "float32", (None, 10))


def info(batch, inputs=(IMAGE,), outputs=(LOGITS,), shapes=None) -> ModelInfo:
    return ModelInfo("m", inputs, outputs, 1, 30.0, Priority.REALTIME, 1, shapes=shapes or {},
                     batch=batch)


def test_the_batch_limit_is_the_configured_max_within_the_shape_range():
    assert batching.max_rows(info(None)) == 0
    assert batching.max_rows(info(BatchConfig(8))) == 8
    ranged = {"image": ShapeRange((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}
    assert batching.max_rows(info(BatchConfig(8), shapes=ranged)) == 4
    fixed = TensorSpec("image", "float32", (1, 3, 8, 8))
    assert batching.max_rows(info(BatchConfig(8), inputs=(fixed,))) == 0


def test_a_model_that_cannot_batch_is_a_one_line_shape_error():
    fixed = TensorSpec("image", "float32", (1, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"^model 'm': batch needs a dynamic first dimension "
                                         r"in every input; input 'image' is declared \[1, 3"):
        batching.check_batchable(info(BatchConfig(4), inputs=(fixed,)))
    one = {"image": ShapeRange.fixed_at((1, 3, 8, 8))}
    with pytest.raises(ShapeError, match="a range whose max allows 2 or more rows"):
        batching.check_batchable(info(BatchConfig(4), shapes=one))
    with pytest.raises(ShapeError, match="every output"):
        batching.check_batchable(info(BatchConfig(4), outputs=(
            TensorSpec("logits", "float32", (1, 10)),)))
    batching.check_batchable(info(BatchConfig(4)))
    batching.check_batchable(info(None, inputs=(fixed,)))       # not asked to batch: fine


def test_shape_keys_match_only_the_same_shapes_but_for_dim_0():
    a = batching.shape_key({"image": np.zeros((2, 3, 8, 8), np.float32)})
    b = batching.shape_key({"image": np.zeros((1, 3, 8, 8), np.float32)})
    c = batching.shape_key({"image": np.zeros((1, 3, 16, 16), np.float32)})
    d = batching.shape_key({"image": np.zeros((1, 3, 8, 8), np.float16)})
    assert a[0] == 2 and b[0] == 1 and a[1] == b[1]
    assert c[1] != b[1] and d[1] != b[1]
    assert batching.shape_key({"a": np.zeros((1, 2)), "b": np.zeros((2, 2))}) is None
    assert batching.shape_key({}) == (None, ())


def test_a_profile_keeps_latency_per_batch_size_and_refuses_bad_entries():
    from edgesched.sched.profile import Profile
    profile = Profile("orin-nano", {}, batch_us={"m": {1: (100.0, 50.0), 4: (300.0, 120.0)}})
    raw = profile.to_json()
    assert raw["batch_us"] == {"m": {"1": [100.0, 50.0], "4": [300.0, 120.0]}}
    assert Profile.from_json(raw).batch_seconds() == {"m": {1: 150e-6, 4: 420e-6}}
    assert "batch_us" not in Profile("orin-nano", {}).to_json()     # older readers unchanged
    for bad, why in [({"m": {"0": [1.0]}}, "'0' is not a number of rows"),
                     ({"m": {"2": [-1.0]}}, "batch_us.m.2 = -1.0 is not a positive time")]:
        with pytest.raises(ValueError, match=why):
            Profile.from_json({**raw, "batch_us": bad})
