"""`edgesched build --measured PROFILE`: slices re-cut on the per-node times a TensorRT
calibration measured (profile meta node_us), instead of cost-model estimates."""
from __future__ import annotations

import onnx
import pytest

from edgesched.backends.tensorrt import EngineBuildError
from edgesched.commands.build import build
from edgesched.modelfiles.manifest import read_manifest
from edgesched.sched.profile import Profile
from edgesched.types import SliceDemand
from tests import graphs


def _nodes_per_slice(out) -> list[int]:
    manifest = read_manifest(out)
    return [len(onnx.load(str(manifest.slice_path(s))).graph.node) for s in manifest.slices]


def test_measured_node_times_move_the_cuts(tmp_path):
    model = graphs.residual_chain(blocks=4).model
    path = tmp_path / "chain.onnx"
    onnx.save(model, str(path))
    names = [n.name for n in model.graph.node]
    estimated = build(path, 2, tmp_path / "est", name="chain")
    # measured: the first node is by far the slowest, so one slice should hold little else
    node_us = {n: 1.0 for n in names} | {names[0]: 10_000.0}
    profile = Profile("tensorrt:orin-agx", {"chain": (SliceDemand(0.5, 0.1, 10.0, 0.5),)},
                      meta={"node_us": {"chain": node_us}})
    profile.save(tmp_path / "p.json")
    report = build(path, 2, tmp_path / "meas", name="chain", measured=tmp_path / "p.json")
    assert f"{len(names)} measured node times" in report and "roofline" in estimated
    assert _nodes_per_slice(tmp_path / "meas") != _nodes_per_slice(tmp_path / "est")
    assert _nodes_per_slice(tmp_path / "meas")[0] < _nodes_per_slice(tmp_path / "est")[0]


def test_a_profile_without_times_for_the_model_stops_in_one_line(tmp_path):
    path = tmp_path / "chain.onnx"
    onnx.save(graphs.residual_chain().model, str(path))
    Profile("tensorrt:orin-agx", {}, meta={"node_us": {"other": {"a": 1.0}}}).save(
        tmp_path / "p.json")
    with pytest.raises(EngineBuildError) as e:
        build(path, 2, tmp_path / "out", measured=tmp_path / "p.json")
    assert "'chain'" in str(e.value) and "other" in str(e.value) and "\n" not in str(e.value)
