"""engines/workloads/*.onnx match their generator, run, and cost what they are meant to."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from edgesched.modelfiles.costmodel import analyze  # noqa: E402  (needs onnx)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "engines" / "make_workload_models.py"
WORKLOADS = REPO_ROOT / "engines" / "workloads"

# file -> (inputs, outputs, GFLOPs range): the documented interface and the intended cost.
SPECS = {
    "detector.onnx": ({"image": (1, 3, 384, 384)},
                      {"boxes": (1, 1728, 4), "scores": (1, 1728, 80)}, (5.0, 8.0)),
    "segmenter.onnx": ({"image": (1, 3, 256, 256)}, {"mask": (1, 19, 256, 256)}, (4.0, 10.0)),
    "classifier.onnx": ({"image": (1, 3, 224, 224)}, {"logits": (1, 1000)}, (0.55, 0.7)),
    "reid.onnx": ({"crops": (8, 3, 128, 64)}, {"embeddings": (8, 128)}, (1.0, 2.0)),
    "depthnet.onnx": ({"image": (1, 3, 192, 640)}, {"depth": (1, 1, 192, 640)}, (15.0, 25.0)),
    "vgg.onnx": ({"image": (1, 3, 224, 224)}, {"logits": (1, 1000)}, (28.0, 33.0)),
}


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_workload_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(str(WORKLOADS / name)) for name in SPECS}


def test_generator_covers_exactly_the_committed_files(generator):
    assert set(generator.MODELS) == set(SPECS)
    assert {p.name for p in WORKLOADS.glob("*.onnx")} == set(SPECS)


def test_committed_files_match_regenerated_bytes(generator, tmp_path, capsys):
    generator.main(["--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(generator.MODELS)
    assert all("GFLOPs" in line and "MB weights" in line for line in lines)
    for name in SPECS:
        assert (tmp_path / name).read_bytes() == (WORKLOADS / name).read_bytes(), (
            f"{name} is stale: rerun `python engines/make_workload_models.py` and commit it")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_is_valid_light_and_static(generator, models, name):
    model = models[name]
    assert (WORKLOADS / name).stat().st_size < 64 * 1024
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "edgesched-workloads"

    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert len(names) < 400
    # Weights come from ConstantOfShape: what is stored is shapes, scales and scalars.
    assert max(math.prod(t.dims) for t in model.graph.initializer) <= 4
    assert sum(n.op_type == "ConstantOfShape" for n in model.graph.node) > 10

    shapes = generator.inferred_shapes(model)
    assert [n for n, s in shapes.items() if s is None] == []
    inputs, outputs, _ = SPECS[name]
    dims = lambda vi: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)  # noqa: E731
    assert {i.name: dims(i) for i in model.graph.input} == inputs
    assert {o.name: dims(o) for o in model.graph.output} == outputs
    assert {o: tuple(shapes[o]) for o in outputs} == outputs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_cost_is_in_the_intended_range(models, name):
    report = analyze(models[name])
    assert report.unknown_ops == {} and report.missing_shapes == 0
    assert not [n.name for n in report.nodes if n.estimated]
    low, high = SPECS[name][2]
    assert low <= report.total_flops / 1e9 <= high
    # Real-size weights, seen by the cost model although the file holds none.
    assert sum(n.weight_bytes for n in report.nodes) > 1e6


def test_segmenter_is_the_memory_heavy_one_beside_the_compute_heavy_ones(models):
    # configs/workloads/complementary.yaml pairs them on that premise.
    def intensity(name: str) -> float:
        report = analyze(models[name])
        return report.total_flops / report.total_bytes

    assert intensity("segmenter.onnx") < 0.7 * intensity("detector.onnx")
    assert intensity("segmenter.onnx") < 0.7 * intensity("depthnet.onnx")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_runs_in_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    inputs, outputs, _ = SPECS[name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(WORKLOADS / name), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    results = session.run(list(outputs), feeds)
    for (out, shape), y in zip(outputs.items(), results):
        assert y.shape == shape, out
        assert y.dtype == np.float32
        assert np.isfinite(y).all(), out
