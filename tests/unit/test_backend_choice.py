"""`backend: auto` picks what can actually serve on this machine."""
import sys
import types

import pytest

from edgesched.backends import create_backend, resolve_backend_name
from edgesched.errors import BackendUnavailable
from edgesched.types import BackendName


def test_auto_falls_back_to_onnxruntime_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)      # import tensorrt -> ImportError
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "tensorrt" else object())
    assert resolve_backend_name(BackendName.AUTO) is BackendName.ONNXRUNTIME


def test_auto_picks_tensorrt_when_it_and_pycuda_are_importable(monkeypatch):
    fake = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object()
                        if name in ("tensorrt", "pycuda") else real(name, *a))
    assert resolve_backend_name(BackendName.AUTO) is BackendName.TENSORRT


def test_auto_stays_on_onnxruntime_when_pycuda_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object()
                        if name == "tensorrt" else None if name == "pycuda" else real(name, *a))
    assert resolve_backend_name(BackendName.AUTO) is BackendName.ONNXRUNTIME


def test_tensorrt_without_tensorrt_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)      # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable) as err:
        create_backend(BackendName.TENSORRT, streams=1)
    assert "\n" not in str(err.value) and "tensorrt" in str(err.value)


def test_sim_backend_is_created_for_the_configured_device():
    backend = create_backend(BackendName.SIM, streams=3, sim_device="xavier-agx")
    try:
        assert backend.name == "sim" and backend.num_streams == 3
        assert backend.spec.name == "xavier-agx"
    finally:
        backend.close()
