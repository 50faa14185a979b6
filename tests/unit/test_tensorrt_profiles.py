"""The TensorRT backend with dynamic-shape engines: one optimization profile per execution
context, selected on a stream and synchronized; input shapes checked against the profiles when
staged (InvalidInput for that request only); synthetic runs at the profiles' opt shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgesched.errors import InvalidInput, ModelLoadError, ServerError
from edgesched.shapes import ShapeRange
from edgesched.types import Launch, TensorSpec
from tests.fakes_cuda import write_engine
from tests.unit.tensorrt_helpers import MODEL, inputs, one_line, run_engine, two_slice_model


def narrow(tmp_path, instances: int = 1, cut=((1, 4), (2, 4), (4, 4)), low: int = 1):
    """A two-slice model whose engines take batches low..4 (the cut tensor h: `cut`)."""
    model = two_slice_model(tmp_path / "m", batch=None, profiles=1)
    x = [[low, 4], [max(low, 2), 4], [4, 4]]
    write_engine(model / "slice_00.engine", "slice_00", {"x": ("float32", (-1, 4))},
                 {"h": ("float32", (-1, 4), "x", 1.0)}, profiles=[{"x": x}] * instances)
    write_engine(model / "slice_01.engine", "slice_01", {"h": ("float32", (-1, 4))},
                 {"y": ("float32", (-1, 4), "h", 10.0)},
                 profiles=[{"h": [list(d) for d in cut]}] * instances)
    return model


@pytest.mark.parametrize("trt_version", ["8.6.1", "10.3.0"])
def test_each_context_runs_on_its_own_profile_so_instances_run_at_once(cuda, tmp_path,
                                                                        trt_version):
    # old: 8.6 left the second context with no profile (every enqueue failed); 10.x ran both
    # contexts on profile 0 at once
    fake = cuda.install(trt_version=trt_version)
    gpu = fake.gpu
    backend = cuda.make(streams=3)
    model = two_slice_model(tmp_path / "m", batch=None, trt_major=int(trt_version.split(".")[0]),
                            profiles=2)
    backend.load(MODEL, model, 2)
    assert sorted((c.engine.name, c.profile) for c in gpu.contexts) == \
        [("slice_00", 0), ("slice_00", 1), ("slice_01", 0), ("slice_01", 1)]
    switches = gpu.named("set_optimization_profile_async")
    assert len(switches) == 4
    stream = switches[0].args[2]
    assert {c.args[2] for c in switches} == {stream}
    synced = [i for i, c in enumerate(gpu.calls)
              if c.op == "cuStreamSynchronize" and c.args[1] == stream]
    assert synced and synced[-1] > gpu.calls.index(switches[-1])
    for rid, batch in ((1, 3), (2, 5)):
        backend.stage(rid, MODEL, {"x": inputs(1, batch)[0]})
    gpu.hold()                                     # both launches "running" at once
    backend.launch(Launch(1, MODEL, 0, 0))
    backend.launch(Launch(2, MODEL, 0, 1))
    gpu.release()
    done = []
    while len(done) < 2:
        done += backend.poll(1.0)
    assert [c.error for c in done] == [None, None]
    for rid in (1, 2):
        backend.release(rid)
    results = run_engine(backend, model, [inputs(1, b)[0] for b in (1, 7, 2, 64, 3)],
                         instances=2)
    for tag, batch in enumerate((1, 7, 2, 64, 3)):
        assert results[tag].error is None
        np.testing.assert_array_equal(results[tag].outputs["y"], inputs(1, batch)[0] + 11)


def test_more_instances_than_profiles_is_a_one_line_load_error(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=2)
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, two_slice_model(tmp_path / "m", batch=None, profiles=1), 2)
    line = one_line(info.value)
    assert "1 optimization profile(s)" in line and "--instances 2" in line
    backend.load(MODEL, two_slice_model(tmp_path / "n"), 2)        # static: no profile needed


def test_a_shape_outside_the_profile_is_invalid_input_and_fails_only_that_request(cuda,
                                                                                  tmp_path):
    # old: staged as is, then refused by set_input_shape at launch: a device failure
    fake = cuda.install()
    backend = cuda.make(streams=2)
    xs = [inputs(1, 2)[0], inputs(1, 8)[0], inputs(1, 4)[0]]
    results = run_engine(backend, narrow(tmp_path), xs, instances=1)
    assert isinstance(results[1].error, InvalidInput)
    line = one_line(results[1].error)
    assert "8x4" in line and "1x4 to 4x4" in line and "slice_00.engine" in line
    for tag in (0, 2):
        assert results[tag].error is None
        np.testing.assert_array_equal(results[tag].outputs["y"], xs[tag] + 11)
    assert len(fake.gpu.named("execute_async_v3")) == 4            # the refused one never ran


def test_stage_refuses_before_holding_anything(cuda, tmp_path):
    fake = cuda.install()
    backend = cuda.make(streams=1)
    backend.load(MODEL, narrow(tmp_path), 1)
    allocations = len(fake.gpu.named("alloc"))
    with pytest.raises(InvalidInput, match="outside the range"):
        backend.stage(1, MODEL, {"x": np.zeros((5, 4), np.float32)})
    assert len(fake.gpu.named("alloc")) == allocations
    backend.release(1)                           # what the engine does next: harmless


def test_a_static_engine_narrows_the_model_spec_and_refuses_other_sizes(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m", batch=2)
    raw = json.loads((model / "manifest.json").read_text())
    raw["inputs"][0]["shape"] = [None, 4]                 # the manifest leaves batch dynamic
    (model / "manifest.json").write_text(json.dumps(raw))
    loaded = backend.load(MODEL, model, 1)
    assert loaded.inputs == (TensorSpec("x", "float32", (2, 4)),)
    with pytest.raises(InvalidInput, match="does not match the engine's 2x4"):
        backend.stage(1, MODEL, {"x": np.zeros((3, 4), np.float32)})


def test_a_synthetic_run_uses_each_profiles_opt_shape(cuda, tmp_path):
    # old: zeros at 1 for each dynamic dim, below this profile's min of 2
    cuda.install()
    backend = cuda.make(streams=1)
    backend.load(MODEL, narrow(tmp_path, cut=((2, 4), (3, 4), (4, 4)), low=2), 1)
    backend.stage(7, MODEL, {})
    backend.launch(Launch(7, MODEL, 1, 0))                # slice 1 alone: h at its opt, 3x4
    (done,) = backend.poll(1.0)
    assert done.error is None
    np.testing.assert_array_equal(backend.fetch(7)["y"], np.full((3, 4), 10.0, np.float32))
    backend.stage(8, MODEL, {})
    backend.launch(Launch(8, MODEL, 0, 0))                # x at slice 0's opt, 2x4
    (done,) = backend.poll(1.0)
    assert done.error is None
    backend.release(8)


def test_a_cut_tensor_outside_the_next_profile_fails_that_launch_naming_the_range(cuda,
                                                                                 tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    model = narrow(tmp_path, cut=((1, 4), (2, 4), (3, 4)))
    results = run_engine(backend, model, [inputs(1, 4)[0]], instances=1)
    error = results[0].error
    assert isinstance(error, ServerError) and "'h'" in one_line(error) and "1x4 to 3x4" in \
        str(error)


def test_configured_shapes_must_lie_inside_the_engines_profiles(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    inside = {"x": ShapeRange((1, 4), (2, 4), (4, 4))}
    assert backend.load(MODEL, narrow(tmp_path / "a"), 1, shapes=inside).num_slices == 2
    backend.close()
    backend = cuda.make(streams=1)
    beyond = {"x": ShapeRange((1, 4), (2, 4), (8, 4))}
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, narrow(tmp_path / "b"), 1, shapes=beyond)
    line = one_line(info.value)
    assert "1x4/2x4/8x4" in line and "--shape x:1x4/2x4/8x4" in line
