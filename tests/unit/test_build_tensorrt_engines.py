"""`edgesched build` with a fake TensorRT: an engine per slice, FP16, DLA, network flags."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex

import onnx
import pytest

from edgesched.backends import tensorrt as trt_backend
from edgesched.backends.tensorrt import BuildOptions, EngineBuildError, build_engine, cuda_streams
from edgesched.commands import cli
from edgesched.commands.build import build
from edgesched.modelfiles.manifest import SliceEntry, read_manifest
from tests.unit.build_tensorrt_helpers import one_line

# --- the fake is what the code under test sees ----------------------------------------------

def test_fake_module_is_found_like_the_real_one(fake_trt):
    fake_trt(version="10.3.0")
    assert importlib.util.find_spec("tensorrt") is not None
    assert trt_backend.available() and trt_backend.version() == "10.3.0"


# --- edgesched build with TensorRT ----------------------------------------------------------

def test_build_writes_an_engine_and_layer_info_per_slice(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt()
    out = tmp_path / "built"
    report = build(residual_onnx, 3, out, "chain")
    manifest = read_manifest(out)
    assert [e.engine for e in manifest.slices] == ["slice_00.engine", "slice_01.engine",
                                                    "slice_02.engine"]
    assert sorted(p.name for p in out.glob("*.engine")) == [e.engine for e in manifest.slices]
    assert sorted(p.name for p in out.glob("*.layers.json")) == \
        [f"slice_{k:02d}.layers.json" for k in range(3)]
    for entry, blob in zip(manifest.slices, fake.blobs):
        engine = json.loads((out / entry.engine).read_bytes())
        assert (out / entry.engine).read_bytes() == blob
        # slice k's engine was built from slice k's ONNX file
        assert engine["inputs"] == list(entry.inputs)
        assert engine["engine"] == onnx.load(str(manifest.slice_path(entry))).graph.name
        layers = json.loads((out / entry.engine).with_suffix(".layers.json").read_text())
        assert layers == {"Layers": [f"{engine['engine']}/layer0"], "Bindings": engine["inputs"]}
    assert fake.named("get_engine_information") == \
        [("get_engine_information", fake.module.LayerInformationFormat.JSON)] * 3
    assert "built 3 TensorRT 10.3.0 engines" in report
    assert "FP16" not in report.splitlines()[-1] and "DLA" not in report
    assert len(fake.named("create_network")) == 3 and len(fake.named("parse")) == 3


def test_build_through_the_cli_records_engines(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt()
    out = tmp_path / "cli"
    assert cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(out),
                     "--fp16"]) == 0
    printed = capsys.readouterr()
    assert "built 2 TensorRT 10.3.0 engines (FP16)" in printed.out
    assert all((out / e.engine).is_file() for e in read_manifest(out).slices)
    assert "engines [" in printed.err          # the progress bar goes to stderr


@pytest.mark.parametrize("fp16", [False, True])
def test_fp16_flag_only_with_fp16(fake_trt, residual_onnx, tmp_path, fp16):
    fake = fake_trt()
    build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(fp16=fp16))
    flags = [c[1] for c in fake.named("config.set_flag")]
    BuilderFlag = fake.module.BuilderFlag
    assert flags == ([BuilderFlag.FP16] * 2 if fp16 else [])
    assert not fake.named("config.default_device_type") and not fake.named("config.DLA_core")


def test_dla_sets_device_type_core_and_gpu_fallback(fake_trt, residual_onnx, tmp_path):
    fake = fake_trt(dla_cores=2)
    report = build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(fp16=True, dla_core=1))
    m = fake.module
    assert fake.named("config.default_device_type") == \
        [("config.default_device_type", m.DeviceType.DLA)] * 2
    assert fake.named("config.DLA_core") == [("config.DLA_core", 1)] * 2
    assert sorted(c[1].name for c in fake.named("config.set_flag")) == \
        ["FP16", "FP16", "GPU_FALLBACK", "GPU_FALLBACK"]
    builds = [i for i, c in enumerate(fake.calls) if c[0] == "build_serialized_network"]
    for what in ("config.default_device_type", "config.DLA_core"):
        assert all(i < builds[-1] for i, c in enumerate(fake.calls) if c[0] == what)
    assert "for DLA core 1" in report


def test_dla_without_fp16_is_a_one_line_error_and_builds_nothing(fake_trt, residual_onnx,
                                                                 tmp_path):
    fake = fake_trt()
    with pytest.raises(EngineBuildError) as info:
        build(residual_onnx, 2, tmp_path / "o", options=BuildOptions(dla_core=0))
    assert "--fp16" in one_line(info.value)
    assert not fake.named("build_serialized_network")
    assert not list((tmp_path / "o").glob("*.engine"))


def test_dla_without_fp16_on_the_cli_is_status_2(fake_trt, residual_onnx, tmp_path, capsys):
    fake_trt()
    code = cli.main(["build", str(residual_onnx), "--slices", "2", "--out", str(tmp_path / "o"),
                     "--dla", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--fp16" in err


@pytest.mark.parametrize("cores, core", [(2, 2), (2, 7), (0, 0)])
def test_dla_core_beyond_the_device_is_a_one_line_error(fake_trt, residual_onnx, tmp_path,
                                                        cores, core):
    fake = fake_trt(dla_cores=cores)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions(fp16=True, dla_core=core))
    line = one_line(info.value)
    assert f"--dla {core}" in line and f"{cores} DLA cores" in line
    assert not fake.named("build_serialized_network")
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.parametrize("version, flags", [("8.6.1", 1), ("8.6.2.3", 1), ("10.0.1.6", 0),
                                            ("10.3.0", 0), ("10.7.0.post1", 0), ("11.0.0", 0)])
def test_network_flags_per_tensorrt_version(fake_trt, residual_onnx, tmp_path, version, flags):
    fake = fake_trt(version=version)
    build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert fake.named("create_network") == [("create_network", flags)]
    if flags:
        assert flags == 1 << int(fake.module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


# --- what built each engine -------------------------------------------------------------------

def test_each_engine_is_tagged_with_the_tensorrt_and_gpu_that_built_it(fake_trt, residual_onnx,
                                                                      tmp_path):
    fake = fake_trt(version="10.3.0", dla_cores=2)
    out = tmp_path / "o"
    build(residual_onnx, 2, out, "chain", options=BuildOptions(fp16=True, dla_core=1))
    command = shlex.join(["edgesched", "build", str(residual_onnx.resolve()), "--slices", "2",
                          "--out", str(out.resolve()), "--name", "chain", "--fp16", "--dla", "1"])
    manifest = read_manifest(out)
    for entry in manifest.slices:
        tag = json.loads((out / f"{entry.engine}.json").read_text())
        assert tag == {"tensorrt": "10.3.0", "compute_capability": "8.7",
                       "device": "Fake Orin (integrated)", "dla_core": 1, "precision": ["fp16"],
                       "profiles": 0, "shapes": tag["shapes"], "command": command}
        if "dla_core" in {f.name for f in dataclasses.fields(SliceEntry)}:
            assert entry.dla_core == 1                 # the manifest records it per slice
    # the compute capability came from the driver, through ctypes (no pycuda needed to build)
    assert {c.args[0] for c in fake.gpu.named("cuDeviceGetAttribute")} == {"libcuda"}
    # the layer dump deserialized each DLA engine onto its own core
    assert fake.named("deserialize_cuda_engine") == [("deserialize_cuda_engine", 1)] * 2


def test_without_a_cuda_driver_the_build_says_why_in_one_line(fake_trt, residual_onnx, tmp_path,
                                                             monkeypatch):
    fake = fake_trt()
    monkeypatch.setattr(cuda_streams, "_load_libcuda", lambda: None)
    with pytest.raises(EngineBuildError) as info:
        build_engine(residual_onnx, tmp_path / "x.engine", BuildOptions())
    assert "compute capability" in one_line(info.value) and "libcuda.so.1" in str(info.value)
    assert not fake.named("build_serialized_network")
