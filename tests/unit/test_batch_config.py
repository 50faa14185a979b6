"""The `batch:` model key (config and workload files), camera `sources`, and the batching
detector's generator: one typed line per mistake, values as written."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgesched.commands.workload import Arrival, arrival_times, parse_workload
from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.types import BatchConfig

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "engines" / "examples" / "convnet.onnx"
EXPECTED = ("expected {max: N, wait_ms: W}: max an integer from 1 to 256, wait_ms (optional) "
            "milliseconds from 0 to 1000, got ")


def config(batch) -> dict:
    return {"models": [{"name": "det", "path": str(MODEL), "slo_ms": 33, "batch": batch}]}


def test_batch_is_off_unless_given():
    plain = {"models": [{"name": "det", "path": str(MODEL), "slo_ms": 33}]}
    assert parse_config(plain, "c.yaml", REPO).models[0].batch is None
    assert parse_config(config(None), "c.yaml", REPO).models[0].batch is None
    assert parse_config(config({"max": 4}), "c.yaml", REPO).models[0].batch == BatchConfig(4)
    assert parse_config(config({"max": 8, "wait_ms": 2.5}), "c.yaml", REPO).models[0].batch \
        == BatchConfig(8, 2.5)


@pytest.mark.parametrize("value, got", [
    ({"max": 0}, "max: 0"), ({"max": 257}, "max: 257"), ({"max": 2.5}, "max: 2.5"),
    ({"max": True}, "max: True"), ({"max": 4, "wait_ms": -1}, "wait_ms: -1"),
    ({"max": 4, "wait_ms": float("nan")}, "wait_ms: nan"), ({"max": 4, "wait_ms": "5"},
                                                             "wait_ms: '5'"),
    ({"max": 4, "timeout": 1}, "unknown key 'timeout'"), ({"wait_ms": 1},
                                                           "{'wait_ms': 1} without max"),
    (4, "4"), ("yes", "'yes'"),
])
def test_a_bad_batch_is_one_config_error_line(value, got):
    with pytest.raises(ConfigError) as e:
        parse_config(config(value), "c.yaml", REPO)
    assert str(e.value) == f"c.yaml: models[0].batch: {EXPECTED}{got}"
    assert "\n" not in str(e.value)


def workload(batch=None, **arrival) -> dict:
    model = {"name": "det", "path": str(MODEL), "slices": 2, "slo_ms": 33,
             "priority": "realtime", "arrival": {"kind": "periodic", "fps": 30, **arrival}}
    if batch is not None:
        model["batch"] = batch
    return {"device": "orin-nano", "duration_s": 1, "seed": 1, "models": [model]}


def test_workload_files_take_batch_and_camera_sources():
    w = parse_workload(workload({"max": 4}, sources=4, jitter_ms=2), "w.yaml", REPO)
    assert w.models[0].batch == BatchConfig(4) and w.models[0].arrival.sources == 4
    with pytest.raises(ConfigError, match=r"^w.yaml: models\[0\].batch: expected .*got max: 0$"):
        parse_workload(workload({"max": 0}), "w.yaml", REPO)
    with pytest.raises(ConfigError, match=r"^w.yaml: models\[0\].arrival.sources: expected an "
                                          r"integer from 1 to 64, got 0$"):
        parse_workload(workload(sources=0), "w.yaml", REPO)


def test_each_camera_sends_one_frame_per_period_with_its_own_jitter():
    arrival = Arrival("periodic", fps=10, jitter_ms=5.0, sources=4)
    times = arrival_times(arrival, 1.0, np.random.default_rng(0))
    assert len(times) == 40 and times == sorted(times)
    per_period = np.floor(np.asarray(times) * 10).astype(int)
    assert np.bincount(per_period).tolist() == [4] * 10
    assert len(set(times)) == 40                        # jittered apart
    one = arrival_times(Arrival("periodic", fps=10, jitter_ms=5.0), 1.0,
                        np.random.default_rng(0))
    assert len(one) == 10


def test_the_batching_detector_matches_its_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_batch_detector",
                                                  REPO / "engines" / "make_batch_detector.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path / "d.onnx")])
    assert (tmp_path / "d.onnx").read_bytes() == \
        (REPO / "engines" / "batching" / "detector.onnx").read_bytes()
