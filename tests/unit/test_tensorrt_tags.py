"""Loading tagged engines: refused in one line (with the command that rebuilds them) when built
by another TensorRT or for another compute capability; run on the DLA core they record."""
from __future__ import annotations

import dataclasses

import pytest

from edgesched.backends.tensorrt import tags
from edgesched.errors import ModelLoadError
from edgesched.modelfiles.manifest import read_manifest, write_manifest
from tests.fakes_cuda import write_engine
from tests.unit.tensorrt_helpers import MODEL, inputs, one_line, run_engine, two_slice_model

COMMAND = "edgesched build /m/twostep.onnx --slices 2 --out /m/twostep --fp16"


def tag_all(model, **fields) -> None:
    values = {"tensorrt": "10.3.0", "compute_capability": "8.7", "device": "Orin",
              "command": COMMAND} | fields
    for engine in sorted(model.glob("*.engine")):
        tags.write_tag(engine, tags.EngineTag(**values))


@pytest.mark.parametrize("fields, why", [
    ({"tensorrt": "8.6.1"}, "built by TensorRT 8.6.1, this is TensorRT 10.3.0"),
    ({"tensorrt": "10.4.0"}, "built by TensorRT 10.4.0, this is TensorRT 10.3.0"),
    ({"compute_capability": "7.2", "device": "Xavier"},
     "built for compute capability 7.2 (Xavier), this GPU is 8.7"),
])
def test_a_mismatched_engine_is_refused_before_deserializing(cuda, tmp_path, fields, why):
    fake = cuda.install(trt_version="10.3.0")
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    tag_all(model, **fields)
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, model, 1)
    line = one_line(info.value)
    assert str(model / "slice_00.engine") in line and why in line
    assert f"rebuild it here: {COMMAND}" in line
    assert not fake.gpu.named("deserialize_cuda_engine")


def test_a_matching_or_untagged_engine_loads(cuda, tmp_path):
    cuda.install(trt_version="10.3.0")
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    tag_all(model, tensorrt="10.3.0.26")            # the build number does not matter
    results = run_engine(backend, model, inputs(2), instances=1)
    assert all(r.error is None for r in results.values())
    backend.load("untagged", two_slice_model(tmp_path / "n"), 1)


def test_an_unreadable_tag_names_the_file(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    (model / "slice_01.engine.json").write_text('{"tensorrt": "10.3.0"}')
    with pytest.raises(ModelLoadError, match="slice_01.engine.json: not a valid engine tag"):
        backend.load(MODEL, model, 1)


def test_an_engine_without_a_tag_for_another_gpu_says_to_rebuild(cuda, tmp_path):
    cuda.install()
    backend = cuda.make(streams=1)
    path = write_engine(tmp_path / "net.engine", "net", {"x": ("float32", (1, 4))},
                        {"y": ("float32", (1, 4), "x", 1.0)}, compute_capability="7.2")
    with pytest.raises(ModelLoadError, match="another GPU; rebuild it on this device"):
        backend.load("net", path, 1)


def test_the_runtime_deserializes_a_dla_engine_on_the_core_it_was_built_for(cuda, tmp_path):
    # old: runtime.DLA_core was never set (-1), so every DLA engine ran on core 0
    fake = cuda.install(integrated=True)
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    for k in (0, 1):
        write_engine(model / f"slice_{k:02d}.engine", f"slice_{k:02d}",
                     {"xh"[k]: ("float32", (1, 4))},
                     {"hy"[k]: ("float32", (1, 4), "xh"[k], (1.0, 10.0)[k])}, dla_core=1)
    tag_all(model, dla_core=1)
    results = run_engine(backend, model, inputs(2), instances=1)
    assert all(r.error is None for r in results.values())
    assert [c.args for c in fake.gpu.named("deserialize_cuda_engine")] == [(1,), (1,)]
    assert {c.engine.dla_core for c in fake.gpu.contexts} == {1}


def test_the_manifest_chooses_the_core_where_it_records_one(cuda, tmp_path):
    fake = cuda.install(integrated=True)
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    tag_all(model, dla_core=1)
    manifest = read_manifest(model)
    write_manifest(dataclasses.replace(manifest, slices=tuple(
        dataclasses.replace(e, dla_core=0) for e in manifest.slices)))
    backend.load(MODEL, model, 1)
    assert [c.args for c in fake.gpu.named("deserialize_cuda_engine")] == [(0,), (0,)]


@pytest.mark.parametrize("integrated, core, cores", [(True, 2, 2), (False, 0, 0)])
def test_a_dla_core_the_device_lacks_is_a_load_error(cuda, tmp_path, integrated, core, cores):
    fake = cuda.install(integrated=integrated)
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    tag_all(model, dla_core=core,
            compute_capability="{}.{}".format(*fake.gpu.compute_capability))
    with pytest.raises(ModelLoadError) as info:
        backend.load(MODEL, model, 1)
    assert f"built for DLA core {core}, but this device has {cores} DLA cores" in \
        one_line(info.value)
