"""Installing the fakes where the TensorRT backend imports them from (sys.modules, ctypes)."""
from __future__ import annotations

import importlib.machinery
import sys
import types
from collections import Counter
from dataclasses import dataclass

from edgesched.backends.tensorrt import cuda_streams
from tests.fakes_cuda.driver_api import FakeLibCuda, make_cuda_python
from tests.fakes_cuda.gpu import FakeGpu
from tests.fakes_cuda.pycuda_driver import _AutoinitGuard, make_pycuda
from tests.fakes_cuda.tensorrt_runtime import make_tensorrt

# --- installing them -----------------------------------------------------------------------------

@dataclass
class FakeCuda:
    gpu: FakeGpu
    tensorrt: types.ModuleType
    pycuda_driver: types.ModuleType
    cuda_python: types.ModuleType | None
    libcuda: FakeLibCuda | None

    def vias(self, op: str) -> Counter:
        """Which binding carried each call of a driver-API `op`."""
        return Counter(c.args[0] for c in self.gpu.named(op))


def install(monkeypatch, *, integrated: bool = True, cuda_python: str | None = "bindings",
            libcuda: bool = True, trt_version: str = "10.3.0") -> FakeCuda:
    """Put the fakes where the backend imports them from. cuda_python: "bindings" (the
    `cuda.bindings.driver` layout), "legacy" (`cuda.cuda`) or None (not installed);
    libcuda: whether ctypes finds libcuda.so.1."""
    gpu = FakeGpu(integrated)
    trt = make_tensorrt(gpu, trt_version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    pycuda_driver, driver, lib = install_cuda(monkeypatch, gpu, cuda_python=cuda_python,
                                              libcuda=libcuda)
    return FakeCuda(gpu, trt, pycuda_driver, driver, lib)


def install_cuda(monkeypatch, gpu: FakeGpu, *, cuda_python: str | None = "bindings",
                 libcuda: bool = True):
    """pycuda, cuda-python and libcuda.so.1 on `gpu` (without tensorrt: the builder tests
    bring their own). Returns (pycuda.driver, the cuda-python module or None, FakeLibCuda or
    None)."""
    pycuda, pycuda_driver = make_pycuda(gpu)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda_driver)
    monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_AutoinitGuard(gpu), *sys.meta_path])
    driver = None
    if cuda_python is None:
        monkeypatch.setitem(sys.modules, "cuda", None)          # import cuda -> ImportError
    else:
        package = types.ModuleType("cuda")
        package.__path__ = []
        package.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
        monkeypatch.setitem(sys.modules, "cuda", package)
        if cuda_python == "bindings":
            bindings = types.ModuleType("cuda.bindings")
            bindings.__path__ = []
            driver = make_cuda_python(gpu, "cuda.bindings.driver")
            bindings.driver = driver
            package.bindings = bindings
            monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
            monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
        else:
            driver = make_cuda_python(gpu, "cuda.cuda")
            package.cuda = driver
            monkeypatch.setitem(sys.modules, "cuda.bindings", None)
            monkeypatch.setitem(sys.modules, "cuda.cuda", driver)
    lib = FakeLibCuda(gpu) if libcuda else None
    monkeypatch.setattr(cuda_streams, "_load_libcuda", lambda: lib)
    return pycuda_driver, driver, lib


def check_balanced(gpu: FakeGpu) -> list[str]:
    """What a finished test left behind: retains not released, contexts still pushed (in the
    driver or in pycuda's own stack), on any thread."""
    left = []
    if gpu.retains:
        left.append(f"{gpu.retains} primary-context retain(s) never released")
    if gpu.unbalanced():
        left.append(f"contexts left pushed in the driver: {gpu.unbalanced()}")
    pushed = {t: len([c for c in s if c.valid]) for t, s in gpu.pycuda_stacks.items()}
    if any(pushed.values()):
        left.append(f"contexts left on pycuda's stack: {pushed}")
    return left
