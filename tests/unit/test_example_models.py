"""The committed example models in engines/examples/ match engines/make_examples.py and run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "engines" / "make_examples.py"
EXAMPLES = REPO_ROOT / "engines" / "examples"

# file -> (input name, input shape, output name, output shape): the documented interface.
SPECS = {
    "convnet.onnx": ("image", (1, 3, 96, 96), "logits", (1, 10)),
    "attention.onnx": ("tokens", (1, 32, 64), "features", (1, 32, 64)),
    "depthwise.onnx": ("image", (1, 3, 128, 128), "scores", (1, 100)),
}


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_covers_exactly_the_committed_files(generator):
    assert set(generator.MODELS) == set(SPECS)
    assert {p.name for p in EXAMPLES.glob("*.onnx")} == set(SPECS)


def test_committed_files_match_regenerated_bytes(generator, tmp_path, capsys):
    generator.main(["--out", str(tmp_path)])
    assert len(capsys.readouterr().out.splitlines()) == len(SPECS) + len(generator.SLICED)
    sliced = [f"{Path(n).stem}_sliced/{p.name}" for n in generator.SLICED
              for p in (EXAMPLES / f"{Path(n).stem}_sliced").iterdir()]
    assert sliced and all((tmp_path / f).exists() for f in sliced)
    for name in [*SPECS, *sliced]:
        regenerated = (tmp_path / name).read_bytes()
        assert regenerated == (EXAMPLES / name).read_bytes(), (
            f"{name} is stale: rerun `python engines/make_examples.py` and commit the result"
        )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_is_valid_with_static_shapes(generator, name):
    path = EXAMPLES / name
    assert path.stat().st_size <= 1_500_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "edgesched-examples"

    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)

    shapes = generator.inferred_shapes(model)
    assert [n for n, s in shapes.items() if s is None] == []
    in_name, in_shape, out_name, out_shape = SPECS[name]
    assert [i.name for i in model.graph.input] == [in_name]
    assert [o.name for o in model.graph.output] == [out_name]
    assert tuple(shapes[out_name]) == out_shape


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_runs_in_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    in_name, in_shape, out_name, out_shape = SPECS[name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(EXAMPLES / name), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)
    (y,) = session.run([out_name], {in_name: x})
    assert y.shape == out_shape
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert np.ptp(y) > 0
