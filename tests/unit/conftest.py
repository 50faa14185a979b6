"""Fixtures shared by the split unit suites: saved/sliced test graphs (test_slicing_*.py)
and the fake TensorRT builder (test_build_tensorrt_*.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from edgesched.modelfiles.slicing import slice_model
from tests import graphs
from tests.unit.build_tensorrt_helpers import FakeTRT, save

# --- slicing: each graph kind saved once, each (kind, N) sliced once, per test module ------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("graphs"), {}

    def get(kind: str):
        if kind not in cache:
            case = graphs.ALL_KINDS[kind]()
            path = root / f"{kind}.onnx"
            onnx.save(case.model, str(path))
            cache[kind] = (case, path)
        return cache[kind]
    return get


@pytest.fixture(scope="module")
def sliced(saved, tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("sliced"), {}

    def get(kind: str, parts: int):
        if (kind, parts) not in cache:
            case, path = saved(kind)
            manifest, plan = slice_model(path, parts, root / f"{kind}_{parts}")
            cache[kind, parts] = (case, path, manifest, plan)
        return cache[kind, parts]
    return get


# --- engine building: the fake TensorRT builder, and a model to build -----------------------

@pytest.fixture
def fake_trt(monkeypatch):
    """install(**FakeTRT options) -> the FakeTRT now importable as `tensorrt`."""
    def install(**options) -> FakeTRT:
        fake = FakeTRT(**options)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        return fake
    return install


@pytest.fixture
def residual_onnx(tmp_path) -> Path:
    return save(graphs.residual_chain().model, tmp_path / "chain.onnx")
