"""Optimization profiles for dynamic dims, and builder settings made before each build."""
from __future__ import annotations

from onnx import helper

from edgesched.backends import tensorrt as trt_backend
from edgesched.backends.tensorrt import BuildOptions, build_engine
from edgesched.commands.build import build
from tests.unit.build_tensorrt_helpers import dynamic_model, save


def test_dynamic_dims_get_one_profile_at_size_1(fake_trt, tmp_path):
    fake = fake_trt()
    path = save(dynamic_model(("N",), two_inputs=True), tmp_path / "dyn.onnx")
    build_engine(path, tmp_path / "dyn.engine", BuildOptions())
    assert len(fake.named("create_optimization_profile")) == 1
    assert len(fake.named("config.add_optimization_profile")) == 1
    assert sorted(fake.named("profile.set_shape")) == [
        ("profile.set_shape", "x", (1, 4), (1, 4), (1, 4)),
        ("profile.set_shape", "z", (2, 1), (2, 1), (2, 1))]
    assert fake.index(("config.add_optimization_profile",)) < \
        fake.index(("build_serialized_network", "dyn"))


def test_static_dims_get_no_profile(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert not fake.named("create_optimization_profile")
    assert not fake.named("config.add_optimization_profile")


def test_dynamic_batch_survives_slicing_into_engines(fake_trt, tmp_path):
    fake = fake_trt()
    model = dynamic_model(("N",))
    model.graph.node.extend([helper.make_node("Tanh", ["y"], ["y2"]),
                             helper.make_node("Relu", ["y2"], ["y3"])])
    model.graph.output[0].name = "y3"
    path = save(model, tmp_path / "dyn.onnx")
    build(path, 3, tmp_path / "o")
    shapes = [c[2] for c in fake.named("profile.set_shape")]
    assert shapes == [(1, 4)] * 3


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
