"""Slicing a model with dynamic dims: refused without shapes, costed and cut at them with.

The model is tests.models' dynamic conv net (input [N, 3, H, W], every dim but the channels
dynamic), and onnx's real light SqueezeNet re-declared with dynamic axes, as an exporter would.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgesched.errors import ModelLoadError
from edgesched.modelfiles.costmodel import analyze
from edgesched.modelfiles.manifest import read_manifest
from edgesched.modelfiles.slicing import LAUNCH_US, plan_slices, slice_model
from edgesched.shapes import ShapeError, ShapeRange
from tests.models import (
    build_dynamic_convnet,
    build_dynamic_light_cnn,
    build_sliced_skip_convnet,
    dynamic_input,
)
from tests.unit.slicing_helpers import TOL, needs_ort, run_reference, run_sliced

RANGE = ShapeRange((1, 3, 224, 224), (2, 3, 320, 320), (4, 3, 640, 640))


def fixed(size: int, batch: int = 1) -> dict[str, ShapeRange]:
    return {"image": ShapeRange.fixed_at((batch, 3, size, size))}


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    return build_dynamic_convnet(tmp_path_factory.mktemp("dyn") / "det.onnx")


def test_without_shapes_slicing_is_refused_in_one_line_before_writing(dynamic, tmp_path):
    with pytest.raises(ShapeError) as e:
        slice_model(dynamic, 3, tmp_path / "out")
    assert str(e.value) == ("model 'det': input 'image' has dynamic dimensions [?, 3, ?, ?]; "
                            "give its shape with --shape image:?x3x?x?")
    assert not (tmp_path / "out").exists()


def test_costs_are_real_and_grow_with_the_shape(dynamic, tmp_path):
    small, plan_small = slice_model(dynamic, 3, tmp_path / "s", shapes=fixed(320))
    big, plan_big = slice_model(dynamic, 3, tmp_path / "b", shapes=fixed(640))
    flops = [sum(s.cost["flops"] for s in m.slices) for m in (small, big)]
    assert flops[0] > 2e8                               # ~0.56 GFLOP at 320x320
    assert 3.9 < flops[1] / flops[0] < 4.1              # 4x the pixels, 4x the work
    assert all(s.cost["flops"] > 0 and s.cost["est_us"] > 0 for s in small.slices)
    launches = LAUNCH_US * sum(s.cost["nodes"] for s in small.slices)   # a fixed cost per node
    roofline = [sum(p.costs_us) - launches for p in (plan_small, plan_big)]
    assert 3.9 < roofline[1] / roofline[0] < 4.1
    assert plan_small.balance < 1.2 and plan_big.balance < 1.2
    # what the slicer saw before shapes: every dynamic dim as 1, a 1x1 image, no work at all
    model = onnx.load(str(dynamic))
    assert analyze(model).total_flops < flops[0] / 1000
    assert sum(plan_slices(model, 3).costs_us) < launches + 1


def test_a_batch_range_costs_at_opt(dynamic, tmp_path):
    ranged, _ = slice_model(dynamic, 3, tmp_path / "r", shapes={"image": RANGE})
    at_opt, _ = slice_model(dynamic, 3, tmp_path / "o", shapes=fixed(320, batch=2))
    assert [s.cost for s in ranged.slices] == [s.cost for s in at_opt.slices]


def test_the_manifest_records_ranges_for_every_slice_input_and_cut_tensor(dynamic, tmp_path):
    manifest, plan = slice_model(dynamic, 3, tmp_path / "m", shapes={"image": RANGE})
    assert manifest.shapes == {"image": RANGE}
    cut = [t for crossing in plan.crossing for t in crossing]
    assert cut and set(cut) <= {t for s in manifest.slices[1:] for t in s.inputs}
    for entry in manifest.slices:
        assert set(entry.shapes) == set(entry.inputs)
    ranges = {t: r for s in manifest.slices for t, r in s.shapes.items()}
    # the stem is a stride-2 conv: half the height and width, 16 channels, at each point
    assert ranges["stem"] == ShapeRange((1, 16, 112, 112), (2, 16, 160, 160), (4, 16, 320, 320))
    assert all(ranges[t].min[0] == 1 and ranges[t].max[0] == 4 for t in cut)
    again = read_manifest(manifest.directory)
    assert again.shapes == manifest.shapes
    assert [s.shapes for s in again.slices] == [s.shapes for s in manifest.slices]
    raw = json.loads((manifest.directory / "manifest.json").read_text())
    assert raw["shapes"]["image"] == {"min": [1, 3, 224, 224], "opt": [2, 3, 320, 320],
                                      "max": [4, 3, 640, 640]}
    # the slice files keep the dynamic dims: ONNX Runtime takes any size the model takes
    first = onnx.load(str(manifest.slice_path(manifest.slices[0])))
    dims = first.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False]


@needs_ort
def test_sliced_outputs_equal_the_model_at_two_sizes_in_the_range(dynamic, tmp_path):
    manifest, plan = slice_model(dynamic, 3, tmp_path / "eq", shapes={"image": RANGE})
    model = onnx.load(str(dynamic))
    cut = [t for crossing in plan.crossing for t in crossing]
    for batch, size in ((1, 224), (3, 480)):
        feeds = dynamic_input(batch, size, seed=size)
        expected = run_reference(model, feeds, cut)
        got = run_sliced(manifest, feeds)
        assert got["logits"].shape == (batch, 10)
        for name in ["logits", *cut]:
            np.testing.assert_allclose(got[name], expected[name], **TOL, err_msg=name)


def test_cuts_avoid_tensors_whose_shape_depends_on_the_data(tmp_path):
    # x -> Relu -> a; NonZero(a) is [2, ?] whatever the input shape says; y = a + count
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("NonZero", ["a"], ["nz"], name="nonzero"),
             helper.make_node("Cast", ["nz"], ["nzf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["nzf"], ["count"], name="count", keepdims=0),
             helper.make_node("Add", ["a", "count"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "nz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    manifest, plan = slice_model(path, 5, tmp_path / "out",
                                 shapes={"x": ShapeRange((1, 4), (2, 4), (8, 4))})
    assert not any(t in ("nz", "nzf") for crossing in plan.crossing for t in crossing)
    assert any("skipped" in note and "shape" in note for note in plan.notes), plan.notes
    assert all(set(s.shapes) == set(s.inputs) for s in manifest.slices)


def test_a_manifest_written_before_shapes_still_loads(tmp_path):
    manifest = read_manifest(build_sliced_skip_convnet(tmp_path / "old"))
    assert manifest.shapes == {} and all(s.shapes == {} for s in manifest.slices)


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(shapes={"img": [1, 3, 224, 224]}), "'img', which is not a model input"),
    (lambda m: m.update(shapes={"image": [1, 3]}), "shapes.image: 1x3 does not fit"),
    (lambda m: m.update(shapes={"image": "big"}), "shapes: a shape is a list"),
    (lambda m: m["slices"][0].update(shapes={"stem": [1]}), "slices[0].shapes names 'stem'"),
    (lambda m: m["slices"][1].update(shapes=[1]), "slices[1].shapes must be an object"),
])
def test_bad_shapes_in_a_manifest_are_one_line(dynamic, tmp_path, edit, fragment):
    manifest, _ = slice_model(dynamic, 3, tmp_path / "bad", shapes={"image": RANGE})
    path = manifest.directory / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError) as e:
        read_manifest(manifest.directory)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory):
    path = build_dynamic_light_cnn("squeezenet", tmp_path_factory.mktemp("sq") / "sq.onnx")
    if path is None:
        pytest.skip("onnx backend test data not installed")
    return path


def test_a_real_cnn_with_dynamic_axes_is_refused_then_costed_at_its_shape(squeezenet, tmp_path):
    with pytest.raises(ShapeError, match="'data_0' has dynamic dimensions"):
        slice_model(squeezenet, 4, tmp_path / "none")
    costs = {}
    for size in (224, 448):
        manifest, plan = slice_model(squeezenet, 4, tmp_path / str(size),
                                     shapes={"data_0": ShapeRange.fixed_at((1, 3, size, size))})
        assert len(manifest.slices) == 4 and plan.balance < 1.5, plan
        costs[size] = sum(s.cost["flops"] for s in manifest.slices)
    assert costs[224] > 3e8                              # SqueezeNet: ~0.35 GMAC at 224
    assert 3.5 < costs[448] / costs[224] < 4.5


@needs_ort
def test_a_real_cnn_sliced_for_a_range_runs_equal_at_two_sizes(squeezenet, tmp_path):
    shapes = {"data_0": ShapeRange((1, 3, 160, 160), (1, 3, 224, 224), (2, 3, 320, 320))}
    manifest, plan = slice_model(squeezenet, 3, tmp_path / "r", shapes=shapes)
    model = onnx.load(str(squeezenet))
    cut = [t for crossing in plan.crossing for t in crossing]
    for batch, size in ((1, 160), (2, 288)):
        rng = np.random.default_rng(size)
        feeds = {"data_0": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
        expected, got = run_reference(model, feeds, cut), run_sliced(manifest, feeds)
        for name in [t.name for t in manifest.outputs] + cut:
            assert got[name].shape[0] == batch
            np.testing.assert_allclose(got[name], expected[name], **TOL, err_msg=name)
