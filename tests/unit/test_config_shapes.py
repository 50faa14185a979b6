"""`shapes:` per model in the server config and in workload files: one parser, one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgesched.commands.workload import load_workload, parse_workload
from edgesched.config import load_config, parse_config
from edgesched.errors import ConfigError
from edgesched.shapes import ShapeRange

REPO = Path(__file__).resolve().parents[2]
RANGE = {"min": [1, 3, 320, 320], "opt": [1, 3, 640, 640], "max": [4, 3, 1280, 1280]}
EXPECTED = "input name -> [sizes] or {min: [sizes], opt: [sizes], max: [sizes]}"


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not parsed here")
    return tmp_path


def config(workdir, shapes):
    entry = {"name": "det", "path": "m.onnx", "slo_ms": 33}
    if shapes is not ...:
        entry["shapes"] = shapes
    return parse_config({"models": [entry]}, "c.yaml", workdir)


def workload(workdir, shapes):
    entry = {"name": "det", "path": "m.onnx", "slices": 2, "slo_ms": 33,
             "priority": "realtime", "arrival": {"kind": "periodic", "fps": 30}}
    if shapes is not ...:
        entry["shapes"] = shapes
    return parse_workload({"device": "orin-nano", "duration_s": 1, "seed": 0,
                           "models": [entry]}, "w.yaml", workdir)


@pytest.mark.parametrize("parse", [config, workload])
def test_fixed_shapes_and_ranges_parse_and_default_to_none(workdir, parse):
    (model,) = parse(workdir, {"image": [1, 3, 640, 640], "scale": RANGE}).models
    assert model.shapes == {"image": ShapeRange.fixed_at((1, 3, 640, 640)),
                            "scale": ShapeRange((1, 3, 320, 320), (1, 3, 640, 640),
                                                (4, 3, 1280, 1280))}
    assert parse(workdir, ...).models[0].shapes == {}


@pytest.mark.parametrize("parse, source", [(config, "c.yaml"), (workload, "w.yaml")])
@pytest.mark.parametrize("shapes, got", [
    ({}, "{}"),
    ([1, 3, 640, 640], "[1, 3, 640, 640]"),
    ("image:1x3x640x640", "'image:1x3x640x640'"),
    ({"image": [1, 3, 0, 640]}, "'image': [1, 3, 0, 640] (a shape is a list of 0 to 8 sizes "
                                "from 1 to 1048576)"),
    ({"image": {"min": [1, 3]}}, "'image': {'min': [1, 3]} (a range needs exactly the keys min, "
                                 "opt and max)"),
    ({"image": {"min": [2], "opt": [1], "max": [2]}},
     "'image': {'min': [2], 'opt': [1], 'max': [2]} (min 2 <= opt 1 <= max 2 must hold in "
     "every dimension)"),
    ({7: [1]}, "7: [1] (7 is not an input name)"),
])
def test_bad_shapes_are_one_line_naming_the_file_and_key(workdir, parse, source, shapes, got):
    with pytest.raises(ConfigError) as e:
        parse(workdir, shapes)
    assert str(e.value) == f"{source}: models[0].shapes: expected {EXPECTED}, got {got}"


def test_a_config_file_with_shapes_loads(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"models": [
        {"name": "det", "path": "m.onnx", "slo_ms": 33, "shapes": {"image": RANGE}}]}))
    assert load_config(tmp_path / "c.yaml").models[0].shapes["image"].max == (4, 3, 1280, 1280)


def test_shipped_configs_and_workloads_still_load_without_shapes():
    assert all(m.shapes == {} for m in load_config(REPO / "configs" / "default.yaml").models)
    for path in sorted((REPO / "configs" / "workloads").glob("*.yaml")):
        # (a model that batches has a dynamic batch dim: its range is its shapes)
        assert all(m.shapes == {} or m.batch for m in load_workload(path).models), path
