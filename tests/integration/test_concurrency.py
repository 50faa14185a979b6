"""Many client threads at once: every request gets its own correct answer and is counted once."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgesched import Client, Priority  # noqa: E402
from tests.models import EXAMPLE_MODELS, EXAMPLES, example_input  # noqa: E402

THREADS = 16
REQUESTS_PER_THREAD = 12
SEEDS = 3
HANG_S = 60.0                # hang protection only
MODELS = sorted(EXAMPLE_MODELS)
OUTCOMES = ("completed", "failed", "expired", "rejected", "invalid")


@pytest.fixture(scope="module")
def references(ort_run) -> dict[tuple[str, int], np.ndarray]:
    """(model, seed) -> the output of a direct ONNX Runtime run."""
    return {(name, seed): ort_run(EXAMPLES / f"{name}.onnx", example_input(name, seed))[
        EXAMPLE_MODELS[name][2]] for name in MODELS for seed in range(SEEDS)}


def _counts(client: Client) -> dict[str, dict[str, int]]:
    models = client.stats()["models"]
    return {name: {k: models[name][k] for k in OUTCOMES} for name in MODELS}


def _work(thread: int) -> list[tuple[str, int]]:
    """A thread's (model, seed) sequence: every thread mixes all three models."""
    return [(MODELS[(thread + i) % 3], (thread * 7 + i) % SEEDS)
            for i in range(REQUESTS_PER_THREAD)]


def _run_threads(task: Callable[[int], dict[str, int]]) -> dict[str, int]:
    """Runs task(thread) on THREADS threads started together; requests sent per model."""
    start = threading.Barrier(THREADS)

    def run(thread: int) -> dict[str, int]:
        start.wait(HANG_S)
        return task(thread)

    sent = dict.fromkeys(MODELS, 0)
    with ThreadPoolExecutor(THREADS, thread_name_prefix="test-client") as pool:
        for counts in pool.map(run, range(THREADS), timeout=HANG_S):
            for name, n in counts.items():
                sent[name] += n
    return sent


def _check(outputs: dict[str, np.ndarray], name: str, seed: int, references) -> None:
    got = outputs[EXAMPLE_MODELS[name][2]]
    np.testing.assert_allclose(got, references[name, seed], rtol=1e-5, atol=1e-5,
                               err_msg=f"{name} seed {seed}")


def _session(client: Client, thread: int, references, priority=None) -> dict[str, int]:
    """One thread's requests: half one at a time, half pipelined; all checked."""
    work = _work(thread)
    sent = dict.fromkeys(MODELS, 0)
    half = len(work) // 2
    for name, seed in work[:half]:
        _check(client.infer(name, example_input(name, seed), priority=priority(thread)
                            if priority else None), name, seed, references)
        sent[name] += 1
    pending = [(client.submit(name, example_input(name, seed),
                              priority=priority(thread) if priority else None), name, seed)
               for name, seed in work[half:]]
    for p, name, seed in pending:
        _check(p.result(), name, seed, references)
        sent[name] += 1
    return sent


def _assert_counted(before: dict, after: dict, sent: dict[str, int]) -> None:
    assert sum(sent.values()) == THREADS * REQUESTS_PER_THREAD
    for name in MODELS:
        delta = {k: after[name][k] - before[name][k] for k in OUTCOMES}
        assert delta == {"completed": sent[name], "failed": 0, "expired": 0, "rejected": 0,
                         "invalid": 0}, name


def test_threads_sharing_one_client_get_their_own_answers(example_server, references):
    with Client(example_server[1], timeout_s=HANG_S) as shared:
        before = _counts(shared)
        sent = _run_threads(lambda thread: _session(shared, thread, references))
        _assert_counted(before, _counts(shared), sent)


def test_threads_with_a_client_each_get_their_own_answers(example_server, references):
    def task(thread: int) -> dict[str, int]:
        with Client(example_server[1], timeout_s=HANG_S) as own:
            return _session(own, thread, references)

    with Client(example_server[1], timeout_s=HANG_S) as observer:
        before = _counts(observer)
        sent = _run_threads(task)
        _assert_counted(before, _counts(observer), sent)


def test_realtime_and_best_effort_overrides_are_served(example_server, references):
    # Odd threads ask for realtime and even ones for best effort, whatever the model's class;
    # string and enum spellings both.
    spellings = [Priority.BEST_EFFORT, "realtime", "best_effort", Priority.REALTIME]

    with Client(example_server[1], timeout_s=HANG_S) as shared:
        before = _counts(shared)
        sent = _run_threads(lambda thread: _session(
            shared, thread, references, priority=lambda t: spellings[t % 4]))
        _assert_counted(before, _counts(shared), sent)
