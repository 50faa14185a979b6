"""Fixtures shared by the split unit suites: saved/sliced test graphs (test_slicing_*.py),
the fake TensorRT builder (test_build_tensorrt_*.py) and the fake CUDA stack with its
backends (`cuda`: test_tensorrt_*.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from edgesched.backends.tensorrt import TensorRTBackend
from edgesched.modelfiles.slicing import slice_model
from tests import fakes_cuda, graphs
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
    """install(**FakeTRT options, integrated=True) -> the FakeTRT now importable as `tensorrt`,
    on a FakeGpu with the fake pycuda and libcuda (no cuda-python). At the end: no problem
    the fake noticed, no retain or push left behind."""
    made: list[FakeTRT] = []

    def install(integrated: bool = True, **options) -> FakeTRT:
        fake = FakeTRT(**options)
        fake.gpu = fakes_cuda.FakeGpu(integrated)
        fakes_cuda.install_cuda(monkeypatch, fake.gpu, cuda_python=None)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        made.append(fake)
        return fake
    yield install
    for fake in made:
        assert fake.problems == []
        assert fake.gpu.violations == []
        assert fakes_cuda.check_balanced(fake.gpu) == []


@pytest.fixture
def residual_onnx(tmp_path) -> Path:
    return save(graphs.residual_chain().model, tmp_path / "chain.onnx")


# --- the TensorRT backend over the fake CUDA stack ------------------------------------------

@pytest.fixture
def cuda(monkeypatch):
    """install(**fakes_cuda.install options) -> FakeCuda; backends(...) made through `make`
    are closed at the end, then the fake must have seen no contract violation."""
    installed: list[fakes_cuda.FakeCuda] = []
    backends: list[TensorRTBackend] = []

    class Kit:
        def install(self, **options) -> fakes_cuda.FakeCuda:
            installed.append(fakes_cuda.install(monkeypatch, **options))
            return installed[-1]

        def make(self, streams: int = 3) -> TensorRTBackend:
            backends.append(TensorRTBackend(streams))
            return backends[-1]

    yield Kit()
    for backend in backends:
        backend.close()
    for fake in installed:
        fake.gpu.check_quiescent()
        assert fake.gpu.violations == []
        assert fakes_cuda.check_balanced(fake.gpu) == []   # released; nothing left pushed
