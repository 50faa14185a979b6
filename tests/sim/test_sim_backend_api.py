"""The simulated GPU as a Backend: the protocol, tensors and bookkeeping, loading models."""
from __future__ import annotations

import numpy as np
import pytest

from edgesched.backends.base import Backend
from edgesched.backends.sim import SimBackend
from edgesched.errors import ModelLoadError
from edgesched.types import Launch, SliceDemand
from tests.sim.sim_backend_helpers import (
    COMPUTE,
    IN,
    MEMORY,
    OUT,
    ROOT,
    drain,
    make,
    seconds,
    start,
)


def test_it_implements_the_backend_protocol():
    backend = make()
    for name in ("name", "num_streams", "load", "stage", "launch", "poll", "fetch", "release",
                 "bind", "close"):
        assert hasattr(backend, name), name
    assert backend.name == "sim" and backend.num_streams == 4
    _: Backend = backend


# --- tensors and bookkeeping ----------------------------------------------------------------

def test_fetch_returns_zeros_of_the_output_shapes():
    backend = make()
    start(backend, 1, "compute", 1)
    backend.poll(1.0)
    out = backend.fetch(1)
    assert list(out) == ["y"]
    assert out["y"].shape == (1, 3) and out["y"].dtype == np.float32
    assert not out["y"].any()
    assert backend._staged == {}


def test_fetch_without_outputs_returns_nothing():
    backend = make(outputs=False)
    start(backend, 1, "compute", 1)
    backend.poll(1.0)
    assert backend.fetch(1) == {}
    assert backend._staged == {}


def test_release_leaves_nothing_staged_and_is_idempotent():
    backend = make()
    for rid in (1, 2):
        backend.stage(rid, "compute", {})
    backend.release(1)
    backend.release(1)
    backend.release(99)                               # never staged: nothing to do
    assert backend._staged == {2: "compute"}
    backend.release(2)
    assert backend._staged == {}


def test_a_multi_slice_model_runs_its_slices_in_turn():
    backend = make()
    start(backend, 1, "two", 1, index=0)
    (first,) = backend.poll(1.0)
    start(backend, 1, "two", 2, index=1)
    (second,) = backend.poll(1.0)
    assert seconds(first) == pytest.approx(COMPUTE.duration_us / 1e6)
    assert seconds(second) == pytest.approx(MEMORY.duration_us / 1e6)
    assert second.started_s == first.finished_s


def test_launching_on_a_busy_stream_raises():
    backend = make()
    start(backend, 1, "compute", 1)
    with pytest.raises(RuntimeError, match="stream 1"):
        start(backend, 2, "memory", 1)
    start(backend, 3, "memory", 2)                    # another stream is fine
    assert sorted(drain(backend)) == [1, 3]


def test_close_drops_running_work():
    backend = make()
    start(backend, 1, "compute", 1)
    backend.close()
    assert backend.poll(1.0) == []


# --- loading ---------------------------------------------------------------------------------

def test_loads_a_sliced_directory_with_its_manifest():
    backend = SimBackend("orin-nano", 2, noise_sigma=0.0)
    loaded = backend.load("convnet", ROOT / "engines/examples/convnet_sliced", 1)
    assert loaded.num_slices == 3
    assert [t.name for t in loaded.inputs] == ["image"]
    assert [t.name for t in loaded.outputs] == ["logits"]
    backend.stage(1, "convnet", {})
    for i in range(3):
        backend.launch(Launch(1, "convnet", i, 1))
        (c,) = backend.poll(1.0)
        assert seconds(c) > 0
    assert backend.fetch(1)["logits"].shape == (1, 10)


def test_a_model_built_from_its_profile_runs_at_the_measured_times():
    backend = make()
    demands = [SliceDemand(0.9, 0.3, 500.0, 0.6), SliceDemand(0.4, 0.8, 120.0)]
    loaded = backend.load_profiled("profiled", demands, (IN,), (OUT,))
    assert loaded.num_slices == 2 and loaded.outputs == (OUT,)
    start(backend, 1, "profiled", 1, index=0)
    (first,) = backend.poll(1.0)
    start(backend, 1, "profiled", 1, index=1)
    (second,) = backend.poll(1.0)
    assert seconds(first) == pytest.approx(500e-6) and seconds(second) == pytest.approx(120e-6)


def test_loads_a_single_onnx_file():
    backend = SimBackend("orin-agx", 2)
    loaded = backend.load("convnet", ROOT / "engines/examples/convnet.onnx", 1)
    assert loaded.num_slices == 1 and loaded.inputs and loaded.outputs


@pytest.mark.parametrize("make_path", [
    lambda tmp: tmp / "missing.onnx",
    lambda tmp: tmp,                                                  # no manifest.json
    lambda tmp: (tmp / "junk.onnx").write_bytes(b"\x00not a model") and tmp / "junk.onnx",
])
def test_a_bad_model_path_is_one_clear_error(tmp_path, make_path):
    backend = SimBackend("orin-agx", 2)
    path = make_path(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        backend.load("m", path, 1)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_an_unknown_device_is_refused():
    with pytest.raises(ModelLoadError, match="jetson-tx2.*orin-agx"):
        SimBackend("jetson-tx2", 2)
