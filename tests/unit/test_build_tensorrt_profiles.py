"""Shapes into TensorRT builds: fixed shapes on the network (static engines), ranges in one
optimization profile per instance, a dynamic input without a shape refused; builder settings
made before each build."""
from __future__ import annotations

import json

import pytest
from onnx import helper

from edgesched.backends import tensorrt as trt_backend
from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine
from edgesched.commands import cli
from edgesched.commands.build import build
from edgesched.modelfiles.manifest import read_manifest
from edgesched.shapes import ShapeRange, parse_text
from tests.unit.build_tensorrt_helpers import dynamic_model, one_line, save


def shapes(*texts: str) -> dict[str, ShapeRange]:
    return dict(parse_text(t) for t in texts)


def chain(tmp_path):
    """x[N, 4] -> Relu -> Tanh -> Relu: three slices, two cut tensors."""
    model = dynamic_model(("N",))
    model.graph.node.extend([helper.make_node("Tanh", ["y"], ["y2"]),
                             helper.make_node("Relu", ["y2"], ["y3"])])
    model.graph.output[0].name = "y3"
    return save(model, tmp_path / "dyn.onnx")


def test_a_fixed_shape_is_set_on_the_network_and_needs_no_profile(fake_trt, tmp_path):
    # the old build turned every dynamic dim into 1 through a profile: x at 1x4, z at 2x1
    fake = fake_trt()
    path = save(dynamic_model(("N",), two_inputs=True), tmp_path / "dyn.onnx")
    build_engine(path, tmp_path / "dyn.engine", BuildOptions(), shapes("x:8x4", "z:2x16"))
    assert sorted(fake.named("input.shape")) == [("input.shape", "x", (8, 4)),
                                                 ("input.shape", "z", (2, 16))]
    assert not fake.named("create_optimization_profile")
    assert json.loads(fake.blobs[0])["shapes"] == {"x": [8, 4], "z": [2, 16]}
    tag = json.loads((tmp_path / "dyn.engine.json").read_text())
    assert tag["profiles"] == 0 and tag["shapes"] == {"x": [8, 4], "z": [2, 16]}


@pytest.mark.parametrize("instances", [1, 3])
def test_a_range_gets_one_identical_profile_per_instance(fake_trt, tmp_path, instances):
    fake = fake_trt()
    path = save(dynamic_model(("N",), two_inputs=True), tmp_path / "dyn.onnx")
    build_engine(path, tmp_path / "dyn.engine", BuildOptions(profiles=instances),
                 shapes("x:1x4/4x4/16x4", "z:2x8"))
    assert len(fake.named("create_optimization_profile")) == instances
    assert fake.named("profile.set_shape") == \
        [("profile.set_shape", "x", (1, 4), (4, 4), (16, 4))] * instances
    assert fake.named("input.shape") == [("input.shape", "z", (2, 8))]    # fixed: on the network
    adds = [i for i, c in enumerate(fake.calls) if c[0] == "config.add_optimization_profile"]
    assert len(adds) == instances and adds[-1] < fake.index(("build_serialized_network", "dyn"))
    assert json.loads(fake.blobs[0])["profiles"] == instances
    assert json.loads((tmp_path / "dyn.engine.json").read_text())["profiles"] == instances


def test_a_dynamic_input_without_a_shape_names_it_and_the_option(fake_trt, tmp_path):
    fake = fake_trt()
    path = save(dynamic_model(("N", "C")), tmp_path / "dyn.onnx")
    with pytest.raises(EngineBuildError) as info:
        build_engine(path, tmp_path / "dyn.engine", BuildOptions())
    line = one_line(info.value)
    assert "'x'" in line and "[?, ?, 4]" in line and "--shape x:NxNx4" in line
    assert not fake.named("build_serialized_network")
    assert not (tmp_path / "dyn.engine").exists()


@pytest.mark.parametrize("given, expected", [("w:1x4", "no such input"),
                                             ("x:1x5", "does not fit"),
                                             ("x:1x4x1", "does not fit")])
def test_a_shape_that_does_not_fit_the_input_is_refused(fake_trt, tmp_path, given, expected):
    fake = fake_trt()
    path = save(dynamic_model(("N",)), tmp_path / "dyn.onnx")
    with pytest.raises(EngineBuildError, match=expected) as info:
        build_engine(path, tmp_path / "dyn.engine", BuildOptions(), shapes(given))
    one_line(info.value)
    assert not fake.named("build_serialized_network")


def test_static_dims_get_no_profile(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert not fake.named("create_optimization_profile")
    assert not fake.named("config.add_optimization_profile")
    assert not fake.named("input.shape")


def test_every_slice_is_built_for_its_own_inputs_cut_tensors_included(fake_trt, tmp_path):
    fake = fake_trt()
    report = build(chain(tmp_path), 3, tmp_path / "o", shapes=shapes("x:1x4/4x4/8x4"),
                   options=BuildOptions(profiles=2))
    per_slice = [c[1:] for c in fake.named("profile.set_shape")]
    assert per_slice == [("x", (1, 4), (4, 4), (8, 4))] * 2 + \
        [("y", (1, 4), (4, 4), (8, 4))] * 2 + [("y2", (1, 4), (4, 4), (8, 4))] * 2
    assert "2 optimization profile(s) each" in report
    manifest = read_manifest(tmp_path / "o")
    for entry in manifest.slices:
        tag = json.loads((tmp_path / "o" / f"{entry.engine}.json").read_text())
        assert tag["profiles"] == 2
        assert tag["shapes"] == {n: r.to_json() for n, r in entry.shapes.items()}
        assert "--shape x:1x4/4x4/8x4" in tag["command"] and "--instances 2" in tag["command"]


def test_a_fixed_shape_through_build_makes_static_engines(fake_trt, tmp_path):
    fake = fake_trt()
    report = build(chain(tmp_path), 3, tmp_path / "o", shapes=shapes("x:2x4"))
    assert [c[1:] for c in fake.named("input.shape")] == [("x", (2, 4)), ("y", (2, 4)),
                                                          ("y2", (2, 4))]
    assert not fake.named("create_optimization_profile") and "profile" not in report


def test_shapes_on_the_cli(fake_trt, tmp_path, capsys):
    fake = fake_trt()
    model = chain(tmp_path)
    assert cli.main(["build", str(model), "--slices", "2", "--out", str(tmp_path / "o"),
                     "--shape", "x:1x4/2x4/8x4", "--instances", "3"]) == 0
    assert len(fake.named("create_optimization_profile")) == 6
    capsys.readouterr()
    for argv, text in [(["--shape", "x:1x4", "--shape", "x:2x4"], "'x' has two"),
                       (["--shape", "x:1x4/2x4"], "one shape or three"),
                       (["--shape", "x:1xA"], "integers"),
                       ([], "--shape x:")]:
        try:
            code = cli.main(["build", str(model), "--slices", "2", "--out", str(tmp_path / "p"),
                             *argv])
        except SystemExit as e:                  # argparse's own usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and text in err, (argv, err)


def test_profiling_verbosity_and_workspace_are_set_before_building(fake_trt, residual_onnx,
                                                                   tmp_path):
    fake = fake_trt()
    m = fake.module
    build_engine(residual_onnx, tmp_path / "a.engine", BuildOptions())
    build_engine(residual_onnx, tmp_path / "b.engine", BuildOptions(workspace_bytes=1 << 24))
    assert fake.named("config.profiling_verbosity") == \
        [("config.profiling_verbosity", m.ProfilingVerbosity.DETAILED)] * 2
    assert fake.named("config.set_memory_pool_limit") == [
        ("config.set_memory_pool_limit", m.MemoryPoolType.WORKSPACE, trt_backend.WORKSPACE_BYTES),
        ("config.set_memory_pool_limit", m.MemoryPoolType.WORKSPACE, 1 << 24)]
    build_at = [i for i, c in enumerate(fake.calls) if c[0] == "build_serialized_network"]
    verbosity_at = [i for i, c in enumerate(fake.calls) if c[0] == "config.profiling_verbosity"]
    assert verbosity_at[0] < build_at[0] < verbosity_at[1] < build_at[1]
    assert fake.named("Logger") == [("Logger", m.Logger.WARNING)] * 2
