"""`edgesched simulate` as a user runs it: a real subprocess, a shipped workload, 1 s simulated."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edgesched", "simulate"]
CAMERA = "configs/workloads/camera.yaml"


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout == ""
    return lines[0]


def test_json_output_is_one_object_with_both_policies():
    result = run("--workload", CAMERA, "--duration", "1", "--policy", "fifo",
                 "--policy", "interference", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    body = json.loads(lines[0])
    assert body["simulated"] is True
    assert body["device"] == "orin-nano" and body["duration_s"] == 1.0
    assert list(body["policies"]) == ["fifo", "interference"]
    for policy in body["policies"].values():
        assert set(policy["models"]) == {"detector", "classifier", "segmenter"}
        assert policy["models"]["detector"]["completed"] + \
            policy["models"]["detector"]["rejected"] == 30
    assert set(body["solo"]) == {"detector"}


def test_the_text_report_is_labelled_simulated_and_device_can_be_overridden():
    result = run("--workload", CAMERA, "--duration", "1", "--policy", "fifo",
                 "--device", "orin-agx")
    assert result.returncode == 0, result.stderr[-2000:]
    first, *rest = result.stdout.splitlines()
    assert first.startswith("SIMULATED on orin-agx")
    assert "policy fifo (simulated)" in result.stdout
    assert "interference" not in "\n".join(rest)


@pytest.mark.parametrize("args, words", [
    (["--workload", "configs/workloads/absent.yaml"], "absent.yaml"),
    (["--workload", "configs/default.yaml"], "default.yaml"),          # a config, not a workload
    (["--workload", CAMERA, "--device", "jetson-tx2"], "--device"),
    (["--workload", CAMERA, "--policy", "fastest"], "--policy"),
    (["--workload", CAMERA, "--duration", "-1"], "--duration"),
    (["--workload", CAMERA, "--duration", "0"], "--duration"),
    (["--workload", CAMERA, "--duration", "soon"], "--duration"),
    (["--workload", CAMERA, "--duration", "nan", "--policy", "fifo"], "--duration"),
    (["--workload", CAMERA, "--duration", "inf", "--policy", "fifo"], "--duration"),
    ([], "--workload"),
])
def test_a_user_error_is_one_line_and_exit_2(args, words):
    assert words in one_line_error(run(*args, timeout=120))


def test_a_broken_workload_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: orin-nano\nmodels: [\n")
    line = one_line_error(run("--workload", str(bad)))
    assert "bad.yaml" in line and "YAML" in line
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((ROOT / CAMERA).read_text().replace("fps: 30", "fps: -30")
                     .replace("../../engines", str(ROOT / "engines")))
    line = one_line_error(run("--workload", str(wrong)))
    assert "wrong.yaml" in line and "fps" in line
