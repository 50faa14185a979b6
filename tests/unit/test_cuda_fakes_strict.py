"""Each rule of the fake driver and NVRTC (tests/fakes_cuda_probes/__init__.py) fires when the
harness breaks it: every test here breaks the harness one way and checks that the fake says
so and the run fails (or, for contracts the real driver does not enforce, that the fake
recorded it). test_cuda_harness.py checks that the unbroken harness breaks none."""
from __future__ import annotations

import ctypes

import pytest

from edgesched.backends.tensorrt import harness
from edgesched.backends.tensorrt.harness import bench as bench_module
from edgesched.backends.tensorrt.harness.bench import Bench
from edgesched.backends.tensorrt.harness.driver import (
    CU_EVENT_DEFAULT,
    DONE_EVENT,
    Cuda,
    CudaDriverError,
)
from edgesched.backends.tensorrt.probes import ProbeKernel
from edgesched.backends.tensorrt.probes.nvrtc import Compiled, Nvrtc
from tests import fakes_cuda_probes as fakes
from tests.fakes_cuda_probes.driver import CUdeviceptr


@pytest.fixture
def fake():
    return fakes.make()


def run(fake, **settings) -> harness.Report:
    return harness.run(harness.Settings(**settings), driver=fake.driver, nvrtc=fake.nvrtc)


def failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def repack(monkeypatch, change) -> None:
    """Make ProbeKernel.pack hand cuLaunchKernel something else: change(values, types)."""
    pack = ProbeKernel.pack
    monkeypatch.setattr(ProbeKernel, "pack", lambda self, **v: change(*pack(self, **v)))


def wrap(monkeypatch, cls, name, make):
    original = getattr(cls, name)
    monkeypatch.setattr(cls, name, make(original))


# --- launch-params ----------------------------------------------------------------------------

def test_a_parameter_missing_from_a_launch_fails_it(monkeypatch, fake):
    repack(monkeypatch, lambda values, types: (values[:-1], types[:-1]))
    report = run(fake)
    assert "launch-params" in fake.rules_broken()
    assert "CUDA_ERROR_INVALID_VALUE" in failed(report)["driver call"]
    assert fake.leftovers() == []                      # still closed cleanly


def test_a_parameter_packed_as_the_wrong_width_fails_the_launch(monkeypatch, fake):
    repack(monkeypatch, lambda values, types: (values, tuple(
        ctypes.c_int if t is ctypes.c_longlong else t for t in types)))
    assert not run(fake).ok
    assert any("packed as c_int" in v for v in fake.violations)


def test_a_handle_object_where_a_pointer_belongs_fails_the_launch(monkeypatch, fake):
    repack(monkeypatch, lambda values, types: (tuple(
        CUdeviceptr(v) if t is ctypes.c_void_p else v for v, t in zip(values, types)), types))
    assert not run(fake).ok
    assert any("not int(pointer)" in v for v in fake.violations)


def test_a_value_that_does_not_fit_its_parameter_fails_the_launch(monkeypatch, fake):
    repack(monkeypatch, lambda values, types: (
        tuple(2**31 if t is ctypes.c_int else v for v, t in zip(values, types)), types))
    assert not run(fake).ok
    assert any("does not fit c_int" in v for v in fake.violations)


def test_kernel_params_in_another_form_are_refused(monkeypatch, fake):
    repack(monkeypatch, lambda values, types: list(values))
    assert not run(fake).ok and "launch-params" in fake.rules_broken()


# --- launch-dims ------------------------------------------------------------------------------

def test_blocks_over_1024_threads_are_refused(monkeypatch, fake):
    monkeypatch.setattr(bench_module, "BLOCK_THREADS", 2048)
    assert not run(fake).ok and "launch-dims" in fake.rules_broken()


def test_a_grid_past_the_device_limit_is_refused(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "launch",
         lambda launch: lambda self, f, grid, block, stream, params:
         launch(self, f, 2**31, block, stream, params))
    assert not run(fake).ok and "launch-dims" in fake.rules_broken()


# --- module -----------------------------------------------------------------------------------

def test_launching_a_function_of_an_unloaded_module_fails(monkeypatch, fake):
    def unload_first(calibrate):
        def run_it(self, stream):
            for handle in list(fake.gpu.modules):
                fake.driver.cuModuleUnload(handle)
            return calibrate(self, stream)
        return run_it
    wrap(monkeypatch, Bench, "calibrate_clock", unload_first)
    report = run(fake)
    assert "CUDA_ERROR_INVALID_HANDLE" in failed(report)["driver call"]
    assert any("module is not loaded" in v for v in fake.violations)


def test_a_function_from_a_module_never_loaded_is_refused(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "function",
         lambda function: lambda self, module, name: function(self, 0xBAD, name))
    report = run(fake)
    assert "modules" in failed(report) and "module" in fake.rules_broken()


def test_ptx_without_its_terminating_nul_is_refused(monkeypatch, fake):
    monkeypatch.setattr(Compiled, "image", property(lambda self: self.ptx.rstrip(b"\0")))
    report = run(fake, prefer_cubin=False)
    assert "CUDA_ERROR_INVALID_PTX" in failed(report)["modules"]
    assert "module" in fake.rules_broken()


def test_ptx_for_a_newer_architecture_than_the_device_is_refused(monkeypatch):
    fake = fakes.make(fakes.Spec(cc=(7, 2), sms=8))
    monkeypatch.setattr(Nvrtc, "target", lambda self, cc, prefer_cubin=True: "compute_87")
    assert "CUDA_ERROR_NO_BINARY_FOR_GPU" in failed(run(fake))["modules"]


def test_a_cubin_the_device_cannot_run_falls_back_to_its_ptx_and_then_fails(monkeypatch):
    fake = fakes.make(fakes.Spec(cc=(8, 6)))
    monkeypatch.setattr(Nvrtc, "target", lambda self, cc, prefer_cubin=True: "sm_87")
    assert "CUDA_ERROR_NO_BINARY_FOR_GPU" in failed(run(fake))["modules"]


def test_a_kernel_without_extern_c_is_not_found_by_its_name(monkeypatch, fake):
    wrap(monkeypatch, ProbeKernel, "source",
         lambda source: lambda self: source(self).replace(b'extern "C" ', b""))
    assert "CUDA_ERROR_NOT_FOUND" in failed(run(fake))["modules"]


# --- events -----------------------------------------------------------------------------------

def test_timing_with_events_made_without_timing_fails(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "event", lambda event: lambda self, flags=DONE_EVENT:
         event(self, flags))
    report = run(fake)
    assert "CUDA_ERROR_INVALID_HANDLE" in failed(report)["driver call"]
    assert any("DISABLE_TIMING" in v for v in fake.violations)


def test_waiting_on_an_event_without_blocking_sync_is_caught(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "event", lambda event: lambda self, flags=CU_EVENT_DEFAULT:
         event(self, flags))
    run(fake)                       # the real driver would spin a core: a contract, no error
    assert "wait" in fake.rules_broken()


def test_unknown_event_flags_are_refused(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "event", lambda event: lambda self, flags=0x1: event(self, 0x8))
    assert not run(fake).ok and "event-flags" in fake.rules_broken()


def test_elapsed_time_before_the_events_completed_is_refused(monkeypatch, fake):
    monkeypatch.setattr(Cuda, "wait", lambda self, event: None)
    assert "CUDA_ERROR_NOT_READY" in failed(run(fake))["driver call"]
    assert any("before both events completed" in v for v in fake.violations)


# --- context and retain -----------------------------------------------------------------------

def test_calls_without_the_primary_context_current_fail(monkeypatch, fake):
    def open_without_push(open_):
        def opened(self):
            open_(self)
            self.call("cuCtxPopCurrent")
            self._pushed = False
            return self
        return opened
    wrap(monkeypatch, Cuda, "open", open_without_push)
    report = run(fake)
    assert "primary context" in failed(report) and "context" in fake.rules_broken()


def test_a_release_without_its_retain_is_caught(monkeypatch, fake):
    def release_twice(close):
        def closed(self):
            problems = close(self)
            try:
                self.call("cuDevicePrimaryCtxRelease", self.device)
            except CudaDriverError:
                pass
            return problems
        return closed
    wrap(monkeypatch, Cuda, "close", release_twice)
    run(fake)
    assert "retain" in fake.rules_broken()


def test_a_primary_context_never_released_is_left_behind(monkeypatch, fake):
    def keep_retained(close):
        def closed(self):
            self._retained = False
            return close(self)
        return closed
    wrap(monkeypatch, Cuda, "close", keep_retained)
    run(fake)
    assert any("retained" in p for p in fake.leftovers())


def test_objects_not_destroyed_are_left_behind(monkeypatch, fake):
    def forget(close):
        def closed(self):
            self._undo.clear()
            return close(self)
        return closed
    wrap(monkeypatch, Cuda, "close", forget)
    run(fake)
    left = " / ".join(fake.leftovers())
    for what in ("stream(s) not destroyed", "event(s) not destroyed", "allocation(s) not freed",
                 "a module is still loaded"):
        assert what in left


# --- stream and memory ------------------------------------------------------------------------

def test_the_legacy_default_stream_is_caught(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "launch", lambda launch: lambda self, f, grid, block, stream, p:
         launch(self, f, grid, block, 0, p))
    run(fake)
    assert "stream" in fake.rules_broken()


def test_the_host_address_of_mapped_memory_is_not_a_device_pointer(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "host_mapped", lambda host_mapped: lambda self, n:
         (host_mapped(self, n)[0],) * 2)
    report = run(fake)
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in failed(report)["driver call"]
    assert "memory" in fake.rules_broken() and fake.leftovers() == []


def test_arrays_smaller_than_the_probe_reads_are_an_illegal_address(monkeypatch, fake):
    wrap(monkeypatch, Cuda, "alloc", lambda alloc: lambda self, n: alloc(self, n // 2))
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in failed(run(fake))["driver call"]


# --- nvrtc ------------------------------------------------------------------------------------

def test_reading_ptx_into_a_read_only_buffer_is_caught(monkeypatch, fake):
    def read_into_bytes(self, prog, size_fn, read_fn):
        size = int(self._call(size_fn, prog))
        buffer = bytes(size)
        self._call(read_fn, prog, buffer)
        return buffer
    monkeypatch.setattr(Nvrtc, "_read", read_into_bytes)
    assert "nvrtc" in failed(run(fake)) and "nvrtc" in fake.rules_broken()


def test_an_option_count_that_does_not_match_the_options_is_caught(fake):
    _, prog = fake.nvrtc.nvrtcCreateProgram(b"", b"x.cu", 0, [], [])
    status = fake.nvrtc.nvrtcCompileProgram(prog, 2, [b"--gpu-architecture=sm_87"])[0]
    assert int(status) != 0 and "nvrtc" in fake.rules_broken()


def test_an_unsupported_architecture_fails_with_nvrtc_s_own_log_line(monkeypatch, fake):
    monkeypatch.setattr(Nvrtc, "target", lambda self, cc, prefer_cubin=True: "sm_10")
    detail = failed(run(fake))["nvrtc"]
    assert "NVRTC_ERROR_INVALID_OPTION: nvrtc: error: invalid value for --gpu-architecture" \
        in detail
    assert fake.nvrtc.live() == []                     # destroyed on the failure path too
