"""The intake byte budget's arithmetic (serve/intake.py) and its config key."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.serve import intake

MiB = 1 << 20


def test_take_refuses_past_the_limit_and_give_returns_the_bytes():
    budget = intake.IntakeBudget(10 * MiB)
    assert budget.take(6 * MiB) and not budget.take(5 * MiB)
    assert budget.take(4 * MiB)                     # exactly to the limit
    budget.give(6 * MiB)
    assert budget.snapshot() == {"held_bytes": 4 * MiB, "peak_bytes": 10 * MiB,
                                 "limit_bytes": 10 * MiB, "refused": 1}
    assert "limits.intake_bytes" in budget.describe(7 * MiB)


def test_take_and_give_from_two_threads_balance():
    budget = intake.IntakeBudget(1 << 40)

    def churn():
        for _ in range(20000):
            budget.take(3)
            budget.give(3)
    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.held_bytes == 0


@pytest.mark.parametrize("intake_bytes, max_message, hwm", [
    (256 * MiB, 64 * MiB, 2), (256 * MiB, 1 * MiB, 64), (1 << 40, 1024, 1000)])
def test_receive_hwm_keeps_a_peers_queue_to_a_quarter_of_the_budget(intake_bytes, max_message,
                                                                     hwm):
    assert intake.receive_hwm(intake_bytes, max_message) == hwm


ROOT = Path(__file__).resolve().parents[2]
MODELS = [{"name": "m", "path": "engines/examples/convnet.onnx", "slo_ms": 10}]


def test_intake_bytes_is_configured_and_must_hold_one_message():
    config = parse_config({"limits": {"intake_bytes": 128 * MiB}, "models": MODELS}, "c.yaml",
                          ROOT)
    assert config.limits.intake_bytes == 128 * MiB
    defaults = parse_config({"models": MODELS}, "c.yaml", ROOT).limits
    assert defaults.intake_bytes == 256 * MiB
    with pytest.raises(ConfigError, match=r"c.yaml: limits.intake_bytes: .*max_message_bytes"):
        parse_config({"limits": {"intake_bytes": 2048}, "models": MODELS}, "c.yaml", ROOT)


def test_return_large_buffers_is_harmless_to_repeat():
    assert intake.return_large_buffers() in (True, False)
    assert intake.return_large_buffers() in (True, False)
