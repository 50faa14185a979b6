"""The probe kernels: every shipped .cu compiles with the real NVRTC for Xavier (7.2) and Orin
(8.7), and the Python side's parameter lists match the sources. The NVRTC tests skip, with the
reason, where libnvrtc is not installed (`pip install -e '.[nvrtc]'` installs it)."""
from __future__ import annotations

import ctypes
import re

import pytest

from edgesched.backends.tensorrt.probes import PROBES, sources
from edgesched.backends.tensorrt.probes import nvrtc as probe_nvrtc
from edgesched.errors import BackendUnavailable
from tests.fakes_cuda_probes import FakeGpu, make_nvrtc, parse_kernels, ptx_type
from tests.fakes_cuda_probes.gpu import PTX_TYPES

ARCHS = ["compute_72", "compute_87"]       # AGX Xavier, Orin (all modules)
ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)


@pytest.fixture(scope="module")
def real_nvrtc():
    try:
        return probe_nvrtc.Nvrtc()
    except BackendUnavailable as e:
        pytest.skip(f"libnvrtc is not installed: {e}")


def _source(file: str) -> bytes:
    return next(p for p in PROBES.values() if p.file == file).source()


def test_the_package_ships_one_source_per_probe():
    assert sources() == sorted(p.file for p in PROBES.values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", sources())
def test_every_source_compiles_to_ptx_for_xavier_and_orin(real_nvrtc, file, arch):
    compiled = real_nvrtc.compile(_source(file), file, arch)
    text = compiled.ptx.rstrip(b"\0").decode()
    assert compiled.ptx.endswith(b"\0")                 # as cuModuleLoadData wants PTX
    assert f".target sm_{arch.split('_')[1]}" in text
    assert compiled.cubin == b""                        # compute_XY: PTX only
    probe = next(p for p in PROBES.values() if p.file == file)
    entries = dict(ENTRY.findall(text))
    assert probe.entry in entries                       # extern "C": the name unmangled
    assert len(re.findall(r"\.param", entries[probe.entry])) == len(probe.params)


@pytest.mark.parametrize("arch", ["sm_72", "sm_87"])
def test_a_cubin_target_gives_machine_code_too(real_nvrtc, arch):
    for probe in PROBES.values():
        compiled = real_nvrtc.compile(probe.source(), probe.file, arch)
        assert compiled.cubin.startswith(b"\x7fELF") and compiled.image_kind == "cubin"


def test_the_compute_probe_keeps_its_fma_chains_and_makes_no_memory_traffic(real_nvrtc):
    text = real_nvrtc.compile(PROBES["compute"].source(), "compute_probe.cu",
                              "compute_87").ptx.decode(errors="replace")
    assert text.count("fma.rn.f32") >= 16 * 8          # the unrolled round survived
    assert "ld.global" not in text


def test_the_target_is_a_cubin_where_nvrtc_knows_the_arch_else_ptx_at_or_below(real_nvrtc):
    assert real_nvrtc.target((8, 7)) == "sm_87"
    assert real_nvrtc.target((8, 7), prefer_cubin=False) == "compute_87"
    archs = real_nvrtc.supported_archs()
    newest = max(archs)
    assert real_nvrtc.target((newest // 10 + 1, 9)) == f"compute_{newest}"


def test_the_fake_nvrtc_gives_the_entry_signatures_the_real_one_does(real_nvrtc):
    fake_nv, gpu = make_nvrtc(), FakeGpu()
    fake = probe_nvrtc.Nvrtc(fake_nv)
    for probe in PROBES.values():
        real = gpu.parse_image(real_nvrtc.compile(probe.source(), probe.file, "compute_87").ptx)
        ours = gpu.parse_image(fake.compile(probe.source(), probe.file, "compute_87").ptx)
        assert real == ours
    assert not fake_nv.live() and not gpu.violations


# --- no NVRTC needed ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(PROBES))
def test_the_python_parameter_list_matches_the_source(kind):
    probe = PROBES[kind]
    kernels = parse_kernels(probe.source().decode())
    extern_c, name, params = next(k for k in kernels if k[1] == probe.entry)
    assert extern_c
    assert [n for _, n in params] == [n for n, _ in probe.params]
    for (c_type, _), (_, ctype) in zip(params, probe.params):
        assert ctype in PTX_TYPES[ptx_type(c_type)], (c_type, ctype)
        assert ("*" in c_type) == (ctype is ctypes.c_void_p)


def test_pack_refuses_a_missing_or_unknown_parameter():
    with pytest.raises(TypeError, match="compute_probe takes out, iterations, spin_cycles"):
        PROBES["compute"].pack(out=1, iterations=2)
    values, types_ = PROBES["compute"].pack(spin_cycles=0, out=16, iterations=3)
    assert values == (16, 3, 0) and types_ == (ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong)


def test_the_library_search_covers_the_wheel_and_cuda_installs():
    places = [str(p) for p in probe_nvrtc.library_candidates(12)]
    assert all(p.endswith("libnvrtc.so.12") for p in places)
    assert any("/usr/local/cuda/lib64/" in p for p in places)


def test_without_libnvrtc_nvrtc_is_unavailable_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(probe_nvrtc, "load_library", lambda: None)
    with pytest.raises(BackendUnavailable, match=r"edgesched\[nvrtc\]"):
        probe_nvrtc.Nvrtc()


def test_a_binding_that_cannot_load_libnvrtc_is_unavailable_in_one_line():
    class Missing:
        def nvrtcVersion(self):
            raise RuntimeError("Failed to dlopen libnvrtc.so.12\nmore")
    with pytest.raises(BackendUnavailable, match=r"^NVRTC library not found \(Failed to dlopen "
                       r"libnvrtc.so.12\): pip"):
        probe_nvrtc.Nvrtc(Missing())
