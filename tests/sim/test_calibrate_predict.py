"""calibrate -> profile -> predict on the simulated device, checked against `simulate`."""
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edgesched.commands.calibrate import calibrate, report
from edgesched.commands.predict import parse_spec, predict
from edgesched.commands.simulate import _prepare, run_policy
from edgesched.commands.workload import load_workload
from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.modelfiles.slicing import slice_model
from edgesched.profiles import mismatch
from edgesched.sched.profile import Profile
from edgesched.serve.server import Server

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "configs" / "workloads" / "complementary.yaml"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The complementary workload's models sliced as it says, calibrated on a simulated NX."""
    tmp = tmp_path_factory.mktemp("cal")
    workload = dataclasses.replace(load_workload(WORKLOAD), duration_s=3.0)
    paths = _prepare(workload, tmp)
    config = parse_config({
        "device": {"backend": "sim", "sim_device": workload.device, "streams": 4},
        "scheduler": {"policy": "interference"}, "telemetry": "none",
        "models": [{"name": m.name, "path": str(paths[m.name]), "slo_ms": m.slo_ms,
                    "priority": m.priority.value} for m in workload.models]},
        "cal.yaml", tmp)
    return workload, paths, config, calibrate(config, runs=5, pairs=40, seed=0)


def test_calibration_records_the_conditions_and_a_good_predictor(calibrated):
    workload, _, config, profile = calibrated
    assert profile.device == workload.device == profile.meta["device"]
    assert profile.meta["backend"] == "sim" and profile.meta["pairs"] == 40
    assert set(profile.meta["models"]) == {m.name for m in workload.models}
    assert profile.meta["predictor_mape"] < 0.10           # held-out pairs
    assert {m: len(d) for m, d in profile.demands.items()} == {
        m.name: m.slices for m in workload.models}
    text = report(profile)
    assert "held-out error" in text and all(m.name in text for m in workload.models)


def test_profile_file_round_trips(calibrated, tmp_path):
    profile = calibrated[3]
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile


# How close a prediction from the profile comes to simulating the real slices, per policy,
# as (realtime, best-effort) relative tolerance. fifo runs one slice at a time, so only the
# measured solo times matter (their sampling noise: a few %). Co-running policies also depend
# on the rebuilt contention; best-effort tails and `interference`'s admission decisions
# amplify small demand differences (measured up to ~33%).
AGREEMENT = {"fifo": (0.10, 0.10), "greedy": (0.25, 0.35), "interference": (0.15, 0.40)}


@pytest.mark.parametrize("policy", sorted(AGREEMENT))
def test_predict_agrees_with_simulate_on_the_same_workload(calibrated, policy):
    workload, paths, _, profile = calibrated
    realtime_tol, best_effort_tol = AGREEMENT[policy]
    simulated = run_policy(workload, paths, policy, profile)
    predicted = predict(profile, list(workload.models), policy,
                        duration_s=workload.duration_s, seed=workload.seed)
    for m in workload.models:
        sim, pred = simulated[m.name], predicted["models"][m.name]
        tol = realtime_tol if m.priority.value == "realtime" else best_effort_tol
        # A best-effort tail under `interference` is set by when admission lets it in: not a
        # figure a profile can pin down, so it is not compared there.
        keys = ("p50_ms", "throughput_rps") if (policy == "interference" and
                                                m.priority.value != "realtime") \
            else ("p50_ms", "p99_ms", "throughput_rps")
        for key in keys:
            assert pred["together"][key] == pytest.approx(sim[key], rel=tol), (m.name, key)
    assert predicted["fits"] and predicted["verdict"].startswith("fits")


def test_an_overloaded_combination_does_not_fit(calibrated):
    profile = calibrated[3]
    # The segmenter alone takes ~0.9 ms: 1200 frames/s with a 1 ms SLO cannot be kept.
    specs = [parse_spec("segmenter:1200:1", profile, {}), parse_spec("depthnet", profile, {})]
    result = predict(profile, specs, "interference", duration_s=1.0)
    assert not result["fits"] and "segmenter" in result["verdict"]
    assert result["models"]["segmenter"]["slo_attainment"] < 0.99


@pytest.mark.parametrize("text, words", [("nosuch", "nosuch"), ("segmenter:x", "RATE"),
                                         ("segmenter:10:-5", "> 0"), ("segmenter:1:2:3", "MODEL")])
def test_bad_model_specs_are_one_line(calibrated, text, words):
    with pytest.raises(ConfigError) as err:
        parse_spec(text, calibrated[3], {})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_profile_from_another_device_or_power_mode_is_a_mismatch(calibrated):
    profile = calibrated[3]
    assert mismatch(profile, {"device": profile.device}) is None
    assert "measured on" in mismatch(profile, {"device": "xavier-agx"})
    moded = dataclasses.replace(profile, meta={**profile.meta, "nvpmodel": "MAXN"})
    assert "nvpmodel" in mismatch(moded, {"device": profile.device, "nvpmodel": "15W"})


def test_the_server_ignores_a_profile_of_another_device_unless_forced(calibrated, tmp_path,
                                                                     caplog):
    _, _, config, profile = calibrated
    dataclasses.replace(profile, device="xavier-agx").save(tmp_path / "other.json")
    config = dataclasses.replace(config, profile=tmp_path / "other.json")
    with caplog.at_level(logging.WARNING, logger="edgesched.server"):
        server = Server(config)
    try:
        assert server.engine.policy.profile.meta.get("estimated")    # cost-model fallback
        assert any("ignoring profile" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
    forced = Server(config, force_profile=True)
    try:
        assert forced.engine.policy.profile.device == "xavier-agx"
    finally:
        forced.stop()


def test_calibrate_and_predict_from_the_command_line(tmp_path):
    slice_model(ROOT / "engines/workloads/classifier.onnx", 2, tmp_path / "classifier")
    (tmp_path / "c.yaml").write_text(
        "device: {backend: sim, sim_device: orin-nano}\ntelemetry: none\n"
        "models:\n  - {name: classifier, path: classifier, slo_ms: 20, priority: realtime}\n")
    cli = [sys.executable, "-m", "edgesched"]
    done = subprocess.run([*cli, "calibrate", "--config", str(tmp_path / "c.yaml"), "--out",
                           str(tmp_path / "p.json"), "--pairs", "8"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Profile.load(tmp_path / "p.json").device == "orin-nano"
    done = subprocess.run([*cli, "predict", "--config", str(tmp_path / "c.yaml"), "--profile",
                           str(tmp_path / "p.json"), "classifier:30", "--duration", "1",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["simulated"] and result["models"]["classifier"]["slo_ms"] == 20
    bad = subprocess.run([*cli, "predict", "--config", str(tmp_path / "c.yaml"), "--profile",
                          str(tmp_path / "missing.json"), "classifier"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_png_report_is_written_where_matplotlib_is_installed(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    from edgesched.commands.calibrate import plot
    assert plot(calibrated[3], tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
