"""The simulator's fast paths are pure speed-ups: each running set's contention kept
(`_contention`) gives the same completions, to the last bit, as computing it afresh; values
made without their dataclass constructor equal those made with it."""
from __future__ import annotations

import dataclasses
import random

import pytest

from edgesched.backends.sim_jobs import fast_constructor
from edgesched.types import Completion, Launch
from tests.sim.sim_backend_helpers import make


class _Forgetful(dict):
    """A cache that keeps nothing: every lookup misses, so contention is computed afresh."""

    def __setitem__(self, key, value) -> None:
        pass


def _run(backend, seed: int, slow_at_s: float | None) -> tuple[list, tuple]:
    """A random but seeded schedule: launches on free streams (stream 0 included), one
    probe for a while, polls with random timeouts. Returns every completion and telemetry."""
    rng = random.Random(seed)
    if slow_at_s is not None:
        backend.slow_down(1.5, slow_at_s)
    out, rid, probe = [], 0, None
    for k in range(400):
        busy = {j.launch.stream for j in backend._jobs.values() if j.launch is not None}
        for stream in range(4):
            if stream not in busy and rng.random() < 0.6:
                rid += 1
                model = rng.choice(["compute", "memory", "tiny", "two"])
                backend.stage(rid, model, {})
                backend.launch(Launch(rid, model, 0, stream))
        if k == 50:
            probe = backend.launch_probe(0.5, 0.3, 1.0)
        if k == 150 and probe is not None:
            backend.stop_probe(probe)
        for c in backend.poll(rng.random() * 0.002):
            out.append((c.launch, c.started_s, c.finished_s))
            backend.release(c.launch.request_id)
    return out, backend.telemetry()


def _two_passes(backend, target: float) -> list:
    """The poll as two passes: `_advance` every job, then collect those that ended (what
    `_poll_until` does in one pass over the jobs after finding the first end)."""
    jobs = backend._jobs
    durations = backend._durations()
    step = first = None
    for (k, j), d in zip(jobs.items(), durations):
        if j.launch is not None:
            t = j.remaining * d
            if step is None or t < step or (t == step and k < first):
                step, first = t, k
    if step is None or backend._now + step > target:
        backend._advance(target - backend._now, durations)
        return []
    backend._advance(step, durations)
    ended = [k for k, j in jobs.items()
             if j.launch is not None and (k == first or j.remaining <= 1e-12)]
    out = [Completion(jobs[k].launch, jobs.pop(k).started_s, backend._now) for k in ended]
    backend._durations_now = None
    return out


@pytest.mark.parametrize("slow_at_s", [None, 0.05])
def test_one_pass_poll_gives_the_two_pass_completions(slow_at_s):
    fused = make(seed=5, noise_sigma=0.03)
    reference = make(seed=5, noise_sigma=0.03)
    reference._poll_until = lambda target: _two_passes(reference, target)
    got, telemetry = _run(fused, 13, slow_at_s)
    expected, expected_telemetry = _run(reference, 13, slow_at_s)
    assert len(got) > 200 and got == expected and telemetry == expected_telemetry


@pytest.mark.parametrize("slow_at_s", [None, 0.05])
def test_cached_contention_gives_the_same_completions_as_computing_it_afresh(slow_at_s):
    cached = make(seed=3, noise_sigma=0.03)
    fresh = make(seed=3, noise_sigma=0.03)
    fresh._contention = _Forgetful()
    got, telemetry = _run(cached, 11, slow_at_s)
    expected, expected_telemetry = _run(fresh, 11, slow_at_s)
    assert len(got) > 200
    assert got == expected
    assert telemetry == expected_telemetry
    assert 0 < len(cached._contention) < len(got)     # sets recur: fewer than completions


def test_fast_constructors_make_values_equal_to_the_dataclass_constructors():
    from edgesched.backends.sim_jobs import completion as _completion
    from edgesched.commands.simulate import _submission
    from edgesched.engine import Submission

    launch = Launch(3, "m", 1, 2)
    c = _completion(launch, 0.25, 0.5)
    assert type(c) is Completion and c == Completion(launch, 0.25, 0.5)
    assert (c.error, c.device_s, c.rejected) == (None, None, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.error = "x"
    s = _submission("m", {}, 1.5)
    assert type(s) is Submission and s == Submission("m", {}, 1.5)


def test_a_fast_constructor_falls_back_where_the_shortcut_would_differ():
    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int
        b: list = dataclasses.field(default_factory=list)     # no plain default to copy

    @dataclasses.dataclass(frozen=True)
    class Posted:
        a: int
        b: int = 0

        def __post_init__(self) -> None:
            object.__setattr__(self, "b", self.a + 1)

    assert fast_constructor(Checked, "a") is Checked
    assert fast_constructor(Posted, "a") is Posted
    assert fast_constructor(Completion, "started_s") is Completion    # not its first field


def test_a_fast_constructor_of_other_arity_makes_equal_values():
    make = fast_constructor(Launch, "request_id", "model", "slice_index", "stream")
    assert make is not Launch and make(1, "m", 0, 2) == Launch(1, "m", 0, 2)
    assert hash(make(1, "m", 0, 2)) == hash(Launch(1, "m", 0, 2))
