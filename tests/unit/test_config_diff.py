"""config_diff.diff: which models a reload adds, removes, retunes or must load again, and which
sections need a restart."""
from __future__ import annotations

from pathlib import Path

from edgesched.config import parse_config
from edgesched.serve.config_diff import diff
from tests.models import EXAMPLES


def config(models: list[dict], **sections) -> object:
    return parse_config({"models": models, **sections}, "<test>", Path("."))


def entry(name: str, **kw) -> dict:
    return {"name": name, "path": str(EXAMPLES / f"{name}.onnx"), "slo_ms": 50, **kw}


def test_models_are_matched_by_name():
    old = config([entry("convnet"), entry("depthwise"), entry("attention")])
    new = config([entry("convnet"), entry("depthwise", slo_ms=20, priority="realtime"),
                  entry("attention", instances=2), {**entry("convnet"), "name": "camera"}])
    d = diff(old, new)
    assert [m.name for m in d.added] == ["camera"] and d.removed == ()
    assert [m.name for m in d.retuned] == ["depthwise"] and d.retuned[0].slo_ms == 20
    assert [m.name for m in d.reloaded] == ["attention"] and d.unchanged == ("convnet",)
    assert d.restart == () and d.changes_models
    assert d.describe() == "+camera ~depthwise (retuned) ~attention (reloaded)"


def test_a_removed_model_and_a_changed_path_or_shape():
    old = config([entry("convnet"), entry("depthwise")])
    new = config([{**entry("depthwise"), "path": str(EXAMPLES / "convnet.onnx")}])
    d = diff(old, new)
    assert d.removed == ("convnet",) and [m.name for m in d.reloaded] == ["depthwise"]
    shaped = config([entry("convnet", shapes={"image": [1, 3, 96, 96]})])
    assert [m.name for m in diff(config([entry("convnet")]), shaped).reloaded] == ["convnet"]


def test_identical_configs_change_nothing():
    d = diff(config([entry("convnet")]), config([entry("convnet")]))
    assert not d.changes_models and d.unchanged == ("convnet",) and d.restart == ()
    assert d.describe() == "no model changes"


def test_other_sections_need_a_restart():
    old = config([entry("convnet")])
    new = config([entry("convnet")], device={"streams": 3}, scheduler={"policy": "fifo"},
                 limits={"queue_depth": 8}, telemetry="none")
    assert diff(old, new).restart == ("device", "scheduler", "limits", "telemetry")
