"""The server reads the configured profile for the `interference` policy."""
import logging
from pathlib import Path

import pytest

from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.sched.predictor import Predictor
from edgesched.sched.profile import Profile
from edgesched.serve.server import Server
from edgesched.types import SliceDemand

DETECTOR = Path(__file__).resolve().parents[2] / "engines" / "workloads" / "detector.onnx"


def server_with(tmp_path, profile: str | None) -> Server:
    data = {"device": {"backend": "sim", "sim_device": "orin-nx", "streams": 2},
            "scheduler": {"policy": "interference"}, "profile": profile,
            "models": [{"name": "detector", "path": str(DETECTOR), "slo_ms": 33,
                        "priority": "realtime"}]}
    return Server(parse_config(data, "test.yaml", tmp_path))


def test_a_valid_profile_informs_the_interference_policy(tmp_path):
    measured = Profile("orin-nx", {"detector": (SliceDemand(0.9, 0.2, 800.0, 0.7),)},
                       Predictor(0.8, 1.1, 0.3))
    measured.save(tmp_path / "profile.json")
    server = server_with(tmp_path, "profile.json")
    try:
        assert server.engine.policy.name == "interference"
        assert server.engine.policy.profile == measured
    finally:
        server.stop()


def test_a_missing_profile_is_reported_and_serving_goes_on_with_estimates(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="edgesched.server"):
        server = server_with(tmp_path, "absent.json")
    try:
        estimate = server.engine.policy.profile
        assert estimate.meta["estimated"] and estimate.device == "estimate:orin-nx"
        (demand,) = estimate.demands["detector"]             # one slice: the whole model
        assert demand.duration_us > 0 and 0 < demand.sm <= 1 and 0 <= demand.mem <= 1
        assert any("absent.json" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


@pytest.mark.parametrize("text", ["not json", '{"version": 99}', '{"version": 1}'])
def test_a_broken_profile_stops_start_up_in_one_line(tmp_path, text):
    (tmp_path / "profile.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        server_with(tmp_path, "profile.json")
    assert "\n" not in str(err.value) and "profile" in str(err.value)


def test_scheduler_settings_reach_the_interference_policy(tmp_path):
    data = {"device": {"backend": "sim", "streams": 2},
            "scheduler": {"policy": "interference", "tolerance": 1.3, "early_reject": True},
            "models": [{"name": "detector", "path": str(DETECTOR), "slo_ms": 33}]}
    server = Server(parse_config(data, "test.yaml", tmp_path))
    try:
        assert (server.engine.policy.tolerance, server.engine.policy.early_reject) == (1.3, True)
    finally:
        server.stop()


@pytest.mark.parametrize("key, value", [("tolerance", 0.9), ("tolerance", "1.1"),
                                        ("tolerance", 7), ("early_reject", "yes")])
def test_bad_scheduler_settings_are_one_line(tmp_path, key, value):
    data = {"scheduler": {"policy": "interference", key: value},
            "models": [{"name": "detector", "path": str(DETECTOR), "slo_ms": 33}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.yaml", tmp_path)
    assert f"scheduler.{key}" in str(err.value) and "\n" not in str(err.value)
