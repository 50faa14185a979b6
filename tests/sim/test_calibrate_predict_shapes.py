"""calibrate and predict of a dynamic-shape model on the simulated device: measured at its
configured shapes, refused without them. Every figure is simulated."""
from __future__ import annotations

import pytest
import yaml

from edgesched.commands.calibrate import calibrate
from edgesched.commands.cli import main
from edgesched.commands.predict import check_shapes, format_prediction, parse_spec, predict
from edgesched.config import load_config
from edgesched.errors import ConfigError
from edgesched.modelfiles.slicing import slice_model
from edgesched.shapes import ShapeError, ShapeRange
from tests.models import build_dynamic_convnet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("calshapes")
    model = build_dynamic_convnet(root / "det.onnx")
    ranged = {"image": ShapeRange((1, 3, 320, 320), (1, 3, 640, 640), (4, 3, 640, 640))}
    manifest, _ = slice_model(model, 3, root / "det_sliced", shapes=ranged)
    return root, model, manifest.directory


def write_config(root, name, path, shapes=None):
    entry = {"name": "det", "path": str(path), "slo_ms": 33, "priority": "realtime"}
    if shapes is not None:
        entry["shapes"] = shapes
    (root / name).write_text(yaml.safe_dump({
        "device": {"backend": "sim", "sim_device": "orin-nano", "streams": 3},
        "scheduler": {"policy": "interference"}, "telemetry": "none", "models": [entry]}))
    return load_config(root / name)


@pytest.fixture(scope="module")
def profiles(files):
    root, model, _ = files
    return {size: calibrate(write_config(root, f"c{size}.yaml", model,
                                         {"image": [1, 3, size, size]}), runs=3, pairs=4)
            for size in (320, 640)}


def test_calibrate_refuses_a_dynamic_input_without_a_shape(files):
    root, model, _ = files
    config = write_config(root, "none.yaml", model)
    with pytest.raises(ShapeError) as e:
        calibrate(config, runs=1, pairs=0)
    assert "'det'" in str(e.value) and "'image'" in str(e.value)
    assert str(e.value).endswith(f"under models[0] in {root / 'none.yaml'}")


def test_calibrate_measures_at_the_configured_shape_and_records_it(profiles):
    assert profiles[640].meta["models"]["det"]["shapes"] == {"image": [1, 3, 640, 640]}
    solo = {size: p.demands["det"][0].duration_us for size, p in profiles.items()}
    assert 3.0 < solo[640] / solo[320] < 4.5, solo           # simulated microseconds


def test_a_sliced_directory_calibrates_at_its_manifest_shapes(files):
    root, _, sliced = files
    profile = calibrate(write_config(root, "sliced.yaml", sliced), runs=2, pairs=2)
    assert len(profile.demands["det"]) == 3
    assert profile.meta["models"]["det"]["shapes"] == {
        "image": {"min": [1, 3, 320, 320], "opt": [1, 3, 640, 640], "max": [4, 3, 640, 640]}}


def test_predict_checks_the_config_shapes_against_the_profile(files, profiles):
    root, model, _ = files
    profile = profiles[640]
    check_shapes(profile, write_config(root, "same.yaml", model, {"image": [1, 3, 640, 640]}),
                 ["det"], "p.json")
    with pytest.raises(ShapeError, match="under models\\[0\\] in"):
        check_shapes(profile, write_config(root, "none.yaml", model), ["det"], "p.json")
    with pytest.raises(ConfigError) as e:
        check_shapes(profile, write_config(root, "other.yaml", model,
                                           {"image": [1, 3, 320, 320]}), ["det"], "p.json")
    assert str(e.value) == (f"{root / 'other.yaml'}: models[0].shapes: expected the shapes "
                            "p.json was calibrated at (image:1x3x640x640), or a recalibration, "
                            "got 'image:1x3x320x320'")


def test_predict_runs_at_the_measured_shapes_and_says_them(profiles):
    profile = profiles[640]
    result = predict(profile, [parse_spec("det:30:33", profile, {})], "interference",
                     duration_s=2.0)
    assert result["simulated"] and result["models"]["det"]["shapes"] == {
        "image": [1, 3, 640, 640]}
    assert "det at image:1x3x640x640" in format_prediction(result)
    alone = {s: predict(p, [parse_spec("det:30:33", p, {})], "fifo", duration_s=2.0)
             ["models"]["det"]["alone"]["p50_ms"] for s, p in profiles.items()}
    assert 3.0 < alone[640] / alone[320] < 4.5, alone


def test_predict_on_the_command_line_stops_with_one_line(files, profiles, capsys):
    root, model, _ = files
    profiles[640].save(root / "p.json")
    write_config(root, "none.yaml", model)
    code = main(["predict", "--profile", str(root / "p.json"), "det:30:33",
                 "--config", str(root / "none.yaml"), "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("edgesched: error: model 'det': input 'image' has dynamic dimensions")
