"""Numbered model versions (modelfiles/versions.py, config.py): the highest served by default,
a pinned one on request, bad layouts refused in one typed line, a new version seen by diff."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.modelfiles import versions
from edgesched.serve.config_diff import diff
from tests.models import EXAMPLES, build_sliced_skip_convnet


def layout(root: Path, spec: dict[str, str | None]) -> Path:
    """root/<dir>/ holding a copy of an example model (its name), or nothing (None)."""
    for directory, model in spec.items():
        (root / directory).mkdir(parents=True)
        if model is not None:
            shutil.copy(EXAMPLES / f"{model}.onnx", root / directory / f"{model}.onnx")
    return root


def config(path: Path, **entry) -> object:
    return parse_config({"models": [{"name": "det", "path": str(path), "slo_ms": 50, **entry}]},
                        "<test>", Path("."))


def test_the_highest_version_is_served_and_a_pin_wins(tmp_path):
    root = layout(tmp_path / "det", {"1": "convnet", "3": "depthwise", "latest": "attention",
                                     "02": "attention"})       # not numbered: ignored
    (model,) = config(root).models
    assert model.version == 3 and model.path == root / "3" / "depthwise.onnx"
    (pinned,) = config(root, version=1).models
    assert pinned.version == 1 and pinned.path == root / "1" / "convnet.onnx"
    assert versions.numbered(root) == {1: root / "1", 3: root / "3"}


def test_a_version_may_be_a_sliced_directory(tmp_path):
    root = tmp_path / "det"
    build_sliced_skip_convnet(root / "2" / "sliced")
    (model,) = config(root).models
    assert model.version == 2 and model.path == root / "2" / "sliced"
    build_sliced_skip_convnet(root / "5")              # the version directory is the model
    assert versions.resolve(root) == (5, root / "5")


def test_a_plain_path_has_no_version(tmp_path):
    (model,) = config(EXAMPLES / "convnet.onnx").models
    assert model.version is None and model.path == EXAMPLES / "convnet.onnx"


@pytest.mark.parametrize("spec, entry, key, words", [
    ({"latest": "convnet", "v2": "convnet"}, {}, "models[0].path",
     "without manifest.json or numbered version directories"),
    ({"1": "convnet", "2": "convnet"}, {"version": 7}, "models[0].version",
     "got version 7, which"),
    ({"1": "convnet", "4": None}, {}, "models[0].path", "version 4"),
    ({"1": "convnet", "2": None}, {"version": 2}, "models[0].version", "holds no .onnx"),
])
def test_bad_layouts_are_one_typed_line(tmp_path, spec, entry, key, words):
    root = layout(tmp_path / "det", spec)
    with pytest.raises(ConfigError) as e:
        config(root, **entry)
    assert e.value.key == key and words in str(e.value) and "\n" not in str(e.value)


def test_two_models_in_one_version_and_a_pin_on_a_plain_file(tmp_path):
    root = layout(tmp_path / "det", {"1": "convnet"})
    shutil.copy(EXAMPLES / "depthwise.onnx", root / "1")
    with pytest.raises(ConfigError, match=r"holds 2 models \(convnet.onnx, depthwise.onnx\)"):
        config(root)
    with pytest.raises(ConfigError) as e:
        config(EXAMPLES / "convnet.onnx", version=1)
    assert e.value.key == "models[0].version" and "directory of numbered versions" in str(e.value)
    with pytest.raises(ConfigError) as e:
        config(root, version=-1)
    assert e.value.key == "models[0].version"


def test_a_new_version_is_a_change_for_diff(tmp_path):
    root = layout(tmp_path / "det", {"1": "convnet"})
    old = config(root)
    layout(root, {"2": "convnet"})
    d = diff(old, config(root))
    assert [m.name for m in d.reloaded] == ["det"] and d.reloaded[0].version == 2
    assert diff(old, config(root, version=1)).unchanged == ("det",)
