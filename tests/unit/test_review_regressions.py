"""Defects a review of this release found, each pinned by the scenario that showed it."""
from __future__ import annotations

import dataclasses

import pytest

from edgesched.backends import load_models
from edgesched.config import ModelConfig
from edgesched.errors import EdgeschedError
from edgesched.types import BatchConfig, Priority
from tests.models import EXAMPLES, example_input

pytest.importorskip("onnxruntime")
MIB = 1024 * 1024


def test_a_model_refused_after_loading_leaves_nothing_on_the_backend():
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    backend = OnnxRuntimeBackend(1)
    try:
        entry = dataclasses.replace(
            ModelConfig("convnet", EXAMPLES / "convnet.onnx", 100.0, Priority.BEST_EFFORT),
            batch=BatchConfig(4, 0.0))                  # its first dimension is fixed
        with pytest.raises(EdgeschedError, match="dynamic first dimension"):
            load_models(backend, [entry])
        assert "convnet" not in backend._slices         # unloaded again, not leaked
    finally:
        backend.close()


def test_a_reload_that_moves_an_evicted_model_to_a_new_version_does_not_revive_the_old(
        monkeypatch):
    from edgesched.backends import ort_footprint
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    from tests.unit.residency_helpers import Rig, entry
    monkeypatch.setattr(ort_footprint, "rss_bytes", lambda: 0)   # initializer bytes only
    backend = OnnxRuntimeBackend(1)
    try:
        rig = Rig(backend, [entry("attention", EXAMPLES / "attention.onnx"),
                            entry("depthwise", EXAMPLES / "depthwise.onnx")],
                  (400_004 + 100_000) / MIB)           # room for attention alone
        assert (rig.state("attention"), rig.state("depthwise")) == ("resident", "evicted")
        rig.submit("depthwise", "w1", example_input("depthwise", 0))   # waits for a reload
        new = load_models(backend, [dataclasses.replace(
            entry("depthwise", EXAMPLES / "depthwise.onnx"), name="depthwise@2")])
        engine = rig.engine
        engine.set_models({**engine.models, **new}, fresh=("depthwise@2",))
        engine.switch({"depthwise": (dataclasses.replace(new["depthwise@2"], name="depthwise"),
                                     "depthwise@2")}, lambda: None)
        (result,) = rig.wait("w1")
        assert result.error is None                      # served by the new version
        for _ in range(50):
            engine.step(0.005)
        assert sorted(backend._slices) == ["attention", "depthwise@2"]   # old one not back
        assert rig.residency.of("attention")["state"] == "resident"       # nor evicted for it
    finally:
        backend.close()


def test_a_file_rebuilt_on_disk_is_read_again_and_a_deleted_one_served_from_ram(tmp_path):
    import os

    from edgesched.backends.blobs import Blobs
    path = tmp_path / "m.engine"
    path.write_bytes(b"first build")
    blobs = Blobs()
    assert blobs.read(path) == b"first build" and blobs.disk_reads == 1
    assert blobs.read(path) == b"first build" and blobs.disk_reads == 1   # from RAM
    path.write_bytes(b"second, longer build")       # rebuilt: another size (and mtime)
    os.utime(path, ns=(1, 1))
    assert blobs.read(path) == b"second, longer build" and blobs.disk_reads == 2
    path.unlink()                                    # gone from the disk: RAM still has it
    assert blobs.read(path) == b"second, longer build" and blobs.disk_reads == 2
    assert blobs.held_bytes == len(b"second, longer build")
