"""Workload files: the shipped ones parse, defaults, paths, one clear line per mistake, arrivals."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgesched.commands.workload import (
    AUTO,
    Arrival,
    Workload,
    WorkloadModel,
    arrival_times,
    load_workload,
    parse_workload,
    with_device,
)
from edgesched.config import SIM_DEVICES
from edgesched.errors import ConfigError
from edgesched.types import Priority

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "workloads"
WORKLOAD_MODELS = REPO / "engines" / "workloads"
BATCH_MODELS = REPO / "engines" / "batching"      # dynamic batch dims (make_batch_detector.py)
# file -> the device it is written for and its models, realtime ones first.
EXPECTED = {
    "camera.yaml": ("orin-nano", ["detector", "classifier", "segmenter"]),
    "robot.yaml": ("orin-agx", ["detector", "segmenter", "depthnet", "reid"]),
    "complementary.yaml": ("orin-nx", ["segmenter", "depthnet", "classifier"]),
    "xavier.yaml": ("xavier-agx", ["classifier", "detector", "reid"]),
    "longlayer-nano.yaml": ("orin-nano", ["detector", "vgg", "classifier"]),
    "longlayer-nx.yaml": ("orin-nx", ["segmenter", "vgg", "classifier"]),
    "cameras-batching.yaml": ("orin-nano", ["detector", "segmenter"]),
}


# --- the shipped workloads ------------------------------------------------------------------

def test_every_shipped_workload_is_listed():
    assert sorted(p.name for p in SHIPPED.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workload_parses(name):
    path = SHIPPED / name
    assert path.read_text().startswith("#"), "each workload starts with what it models"
    w = load_workload(path)
    device, models = EXPECTED[name]
    assert (w.device, [m.name for m in w.models]) == (device, models)
    assert w.source == str(path) and w.duration_s > 0
    for m in w.models:
        assert m.path.parent in (WORKLOAD_MODELS, BATCH_MODELS) and m.path.is_file()
        # Realtime models are sliced (decision points); a small best-effort model may run
        # whole, overlapping on several instances instead.
        assert m.slices == AUTO or (
            1 <= m.slices <= 6 and (m.slices >= 2 or m.priority is Priority.BEST_EFFORT))
        if m.arrival.kind == "periodic" and m.priority is Priority.REALTIME:
            # A realtime stream whose SLO exceeds its period (per instance: two cameras merged
            # into one stream run on two instances) would queue without bound.
            assert m.slo_ms <= m.instances * 1000.0 / m.arrival.fps + 0.5, m.name
    assert any(m.priority is Priority.REALTIME for m in w.models)
    assert any(m.priority is Priority.BEST_EFFORT for m in w.models)


# --- parsing ----------------------------------------------------------------------------------

def base() -> dict:
    return {"device": "orin-nano", "duration_s": 10, "seed": 3, "models": [
        {"name": "det", "path": "a.onnx", "slices": 4, "slo_ms": 33, "priority": "realtime",
         "arrival": {"kind": "periodic", "fps": 30}},
        {"name": "tag", "path": "a.onnx", "slices": 2, "slo_ms": 500,
         "priority": "best_effort", "arrival": {"kind": "poisson", "rate_rps": 20}},
    ]}


def write(directory: Path, data: object, name: str = "w.yaml") -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "a.onnx").write_bytes(b"\0")  # parsing checks the file exists, not its content
    (tmp_path / "b.engine").write_bytes(b"\0")
    (tmp_path / "c.onnx.d").mkdir()
    return tmp_path


def test_parse_gives_typed_values_and_defaults(workdir):
    w = load_workload(write(workdir, base()))
    assert isinstance(w, Workload) and w.models[0] == WorkloadModel(
        name="det", path=workdir / "a.onnx", slices=4, slo_ms=33.0, priority=Priority.REALTIME,
        arrival=Arrival("periodic", fps=30.0), instances=1)
    assert (w.device, w.duration_s, w.seed) == ("orin-nano", 10.0, 3)
    periodic, poisson = (m.arrival for m in w.models)
    assert (periodic.phase_ms, periodic.jitter_ms, periodic.rate_rps) == (0.0, 0.0, None)
    assert (poisson.kind, poisson.rate_rps, poisson.fps, poisson.concurrency) == (
        "poisson", 20.0, None, None)
    assert isinstance(w.models[0].slo_ms, float) and w.models[1].priority is Priority.BEST_EFFORT


def test_all_arrival_keys(workdir):
    data = base()
    data["models"][0]["arrival"] = {"kind": "periodic", "fps": 15, "phase_ms": 5, "jitter_ms": 2.5}
    data["models"][1]["arrival"] = {"kind": "closed", "concurrency": 2}
    data["models"][1]["instances"] = 2
    w = load_workload(write(workdir, data))
    assert w.models[0].arrival == Arrival("periodic", 15.0, None, None, 5.0, 2.5)
    assert w.models[1].arrival == Arrival("closed", concurrency=2)
    assert w.models[1].instances == 2


def test_model_paths_resolve_against_the_workload_file(workdir, tmp_path, monkeypatch):
    (workdir / "configs").mkdir()
    data = base()
    for m in data["models"]:
        m["path"] = "../a.onnx"
    monkeypatch.chdir(tmp_path.parent)  # not the file's directory: must not matter
    w = load_workload(write(workdir / "configs", data))
    assert w.models[0].path == workdir / "a.onnx" and w.models[0].path.is_absolute()
    assert parse_workload(base(), "<test>", workdir).models[0].path == workdir / "a.onnx"


def test_workload_is_frozen(workdir):
    w = load_workload(write(workdir, base()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.seed = 2  # type: ignore[misc]


def edit(path: tuple, value: object) -> dict:
    """base() with the value at `path` (keys and list indices) replaced; DROP removes it."""
    data = copy.deepcopy(base())
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return data


DROP = object()
M0, M1, A0, A1 = ("models", 0), ("models", 1), ("models", 0, "arrival"), ("models", 1, "arrival")
# (id, file contents or data, key named in the error, words the message must hold)
BAD = [
    ("empty", "", "top level", "an empty file"),
    ("not-a-mapping", "- 1\n", "top level", "a mapping"),
    ("yaml-syntax", "device: [orin\n", "line 2, column 1", "valid YAML"),
    ("duplicate-key", "device: orin-nx\ndevice: orin-nano\n", "line 2, column 1", "duplicate"),
    ("unknown-key", edit(("durations",), 5), "durations", "did you mean 'duration_s'"),
    ("no-device", edit(("device",), DROP), "device", "got nothing"),
    ("bad-device", edit(("device",), "orin"), "device", "orin-agx, orin-nx"),
    ("duration-zero", edit(("duration_s",), 0), "duration_s", "> 0"),
    ("duration-text", edit(("duration_s",), "60"), "duration_s", "'60'"),
    ("seed-negative", edit(("seed",), -1), "seed", ">= 0"),
    ("seed-bool", edit(("seed",), True), "seed", "True"),
    ("seed-float", edit(("seed",), 1.5), "seed", "integer"),
    ("no-models", edit(("models",), DROP), "models", "nothing"),
    ("models-empty", edit(("models",), []), "models", "at least one"),
    ("model-not-mapping", edit(M0, "det"), "models[0]", "a mapping"),
    ("model-unknown-key", edit(M0 + ("slo",), 5), "models[0].slo", "did you mean 'slo_ms'"),
    ("no-name", edit(M0 + ("name",), DROP), "models[0].name", "nothing"),
    ("bad-name", edit(M0 + ("name",), "a b"), "models[0].name", "model name"),
    ("duplicate-name", edit(M1 + ("name",), "det"), "models[1].name", "models[0]"),
    ("missing-file", edit(M0 + ("path",), "nope.onnx"), "models[0].path", "does not exist"),
    ("engine-file", edit(M0 + ("path",), "b.engine"), "models[0].path", "another kind"),
    ("directory", edit(M0 + ("path",), "c.onnx.d"), "models[0].path", "a directory"),
    ("no-slices", edit(M0 + ("slices",), DROP), "models[0].slices", "nothing"),
    ("slices-zero", edit(M0 + ("slices",), 0), "models[0].slices", "from 1 to 16"),
    ("slices-17", edit(M1 + ("slices",), 17), "models[1].slices", "from 1 to 16"),
    ("slo-zero", edit(M0 + ("slo_ms",), 0), "models[0].slo_ms", "> 0"),
    ("slo-inf", edit(M0 + ("slo_ms",), float("inf")), "models[0].slo_ms", "finite"),
    ("bad-priority", edit(M1 + ("priority",), "high"), "models[1].priority", "best_effort"),
    ("no-priority", edit(M1 + ("priority",), DROP), "models[1].priority", "nothing"),
    ("instances-zero", edit(M0 + ("instances",), 0), "models[0].instances", "from 1 to 16"),
    ("no-arrival", edit(M0 + ("arrival",), DROP), "models[0].arrival", "nothing"),
    ("arrival-text", edit(M0 + ("arrival",), "periodic"), "models[0].arrival", "kind"),
    ("no-kind", edit(A0 + ("kind",), DROP), "models[0].arrival.kind", "nothing"),
    ("bad-kind", edit(A0 + ("kind",), "burst"), "models[0].arrival.kind", "periodic, poisson"),
    ("no-fps", edit(A0 + ("fps",), DROP), "models[0].arrival.fps", "nothing"),
    ("fps-zero", edit(A0 + ("fps",), 0), "models[0].arrival.fps", "> 0"),
    ("fps-of-poisson", edit(A1 + ("fps",), 30), "models[1].arrival.fps",
     "keys of a poisson arrival: kind, rate_rps, got 'fps', which belongs to periodic"),
    ("rate-of-periodic", edit(A0 + ("rate_rps",), 3), "models[0].arrival.rate_rps",
     "kind, fps, phase_ms, jitter_ms"),
    ("arrival-unknown-key", edit(A0 + ("fsp",), 3), "models[0].arrival.fsp", "did you mean 'fps'"),
    ("phase-negative", edit(A0 + ("phase_ms",), -1), "models[0].arrival.phase_ms", ">= 0"),
    ("jitter-past-period", edit(A0 + ("jitter_ms",), 40), "models[0].arrival.jitter_ms",
     "period"),
    ("no-rate", edit(A1 + ("rate_rps",), DROP), "models[1].arrival.rate_rps", "nothing"),
    ("rate-negative", edit(A1 + ("rate_rps",), -2), "models[1].arrival.rate_rps", "> 0"),
    ("closed-no-concurrency", edit(A1, {"kind": "closed"}), "models[1].arrival.concurrency",
     "nothing"),
    ("closed-concurrency-float", edit(A1, {"kind": "closed", "concurrency": 2.5}),
     "models[1].arrival.concurrency", "integer"),
]


@pytest.mark.parametrize("data,key,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_workload_gives_one_line_naming_file_and_key(workdir, data, key, words):
    path = write(workdir, data)
    with pytest.raises(ConfigError) as info:
        load_workload(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: expected "), message
    assert info.value.key == key and info.value.source == str(path)
    assert words in message


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: file: expected a readable"):
        load_workload(tmp_path / "missing.yaml")


# --- --device override ------------------------------------------------------------------------

def test_with_device_replaces_only_the_device(workdir):
    w = load_workload(write(workdir, base()))
    for device in SIM_DEVICES:
        moved = with_device(w, device)
        assert moved.device == device and moved.models == w.models and moved.seed == w.seed
    assert w.device == "orin-nano"


def test_with_device_rejects_unknown_names(workdir):
    w = load_workload(write(workdir, base()))
    with pytest.raises(ConfigError) as info:
        with_device(w, "jetson-tx2")
    assert str(info.value) == ("--device: device: expected one of orin-agx, orin-nx, orin-nano, "
                               "xavier-agx, got 'jetson-tx2'")


# --- arrival times ----------------------------------------------------------------------------

def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_periodic_count_and_spacing():
    times = arrival_times(Arrival("periodic", fps=30), 2.0, rng())
    assert len(times) == 60 and times[0] == 0.0 and max(times) < 2.0
    assert np.allclose(np.diff(times), 1 / 30)
    # The end is exclusive: 10 fps for 1 s is 0.0 .. 0.9, not 1.0.
    assert arrival_times(Arrival("periodic", fps=10), 1.0, rng()) == pytest.approx(
        [k / 10 for k in range(10)])


def test_periodic_phase():
    times = arrival_times(Arrival("periodic", fps=30, phase_ms=10), 1.0, rng())
    assert times[0] == pytest.approx(0.010) and len(times) == 30 and max(times) < 1.0
    assert arrival_times(Arrival("periodic", fps=1, phase_ms=1500), 1.0, rng()) == []


def test_periodic_jitter_delays_within_bounds_and_keeps_order():
    arrival = Arrival("periodic", fps=30, jitter_ms=5)
    times = np.asarray(arrival_times(arrival, 10.0, rng()))
    late = times - np.arange(len(times)) / 30
    assert len(times) == 300 and np.all(np.diff(times) > 0)
    assert late.min() >= 0 and late.max() < 0.005 and late.std() > 0.001
    assert arrival_times(arrival, 10.0, rng(1)) != arrival_times(arrival, 10.0, rng(2))
    assert arrival_times(arrival, 10.0, rng(1)) == arrival_times(arrival, 10.0, rng(1))


def test_poisson_mean_rate_and_determinism():
    arrival = Arrival("poisson", rate_rps=20)
    times = arrival_times(arrival, 1000.0, rng(7))
    assert 0 <= min(times) and max(times) < 1000.0 and np.all(np.diff(times) > 0)
    assert len(times) / 1000.0 == pytest.approx(20, rel=0.03)  # sd of the count is 0.7%
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: cv 1
    assert arrival_times(arrival, 1000.0, rng(7)) == times
    assert arrival_times(arrival, 1000.0, rng(8)) != times


def test_poisson_low_rate():
    # Expected count 0.05: whatever comes is inside the window.
    times = arrival_times(Arrival("poisson", rate_rps=0.01), 5.0, rng(3))
    assert all(0 <= t < 5.0 for t in times)


def test_closed_has_no_open_loop_arrivals():
    assert arrival_times(Arrival("closed", concurrency=2), 60.0, rng()) == []


def test_arrival_times_are_python_floats():
    times = arrival_times(Arrival("poisson", rate_rps=5), 2.0, rng())
    assert all(type(t) is float for t in times)
