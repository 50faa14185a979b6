"""Fakes of cuda-python's driver and NVRTC bindings for the CUDA harness (`selftest --cuda`)
and the probe kernels, on one simulated GPU with a virtual clock. Separate from
tests/fakes_cuda/ (the TensorRT backend's fakes), which this package does not touch.

Each rule is either an error the real driver returns (returned here too) or a contract of
ours the real one would not catch (recorded only); both append to `violations`, prefixed by
the rule, and tests assert the list stays empty:
  context       a call needing a context without the primary context current on this thread;
                pushing a context not retained, popping with nothing pushed
  retain        a release without a matching retain; cuCtxCreate (not the primary context);
                `problems()` after the run: retains not released, contexts left pushed,
                streams/events/modules/memory left behind
  stream        flags other than CU_STREAM_NON_BLOCKING; the legacy default stream (0); a
                stream never created or destroyed
  event-flags   cuEventCreate with unknown flag bits or INTERPROCESS without DISABLE_TIMING
  elapsed       cuEventElapsedTime on an event made with DISABLE_TIMING (INVALID_HANDLE, as
                the real driver), never recorded, or not yet complete (NOT_READY)
  wait          cuEventSynchronize on an event without BLOCKING_SYNC (it would spin a core)
  module        cuModuleGetFunction / launching / querying a function of a module never
                loaded or unloaded; PTX not NUL-terminated; PTX for a newer architecture or
                a CUBIN for another major version (NO_BINARY_FOR_GPU)
  launch-dims   grid or block dimensions outside the device's limits, over 1024 threads,
                or 2-D/3-D launches of the 1-D probes
  launch-params kernelParams not ((values), (ctypes types)); a count differing from the
                kernel's .entry; a ctypes type that does not match the .param type; a value
                that does not fit; a handle object where int(pointer) belongs; `extra`
  memory        a probe's pointers outside live device-visible allocations (the host address
                of mapped memory instead of its device pointer, a buffer too small for the
                grid, an offset past the array): the context then holds
                CUDA_ERROR_ILLEGAL_ADDRESS and returns it from every later call, as a real
                one does; cuMemHostGetDevicePointer on memory not allocated with DEVICEMAP
  nvrtc         numOptions / numHeaders not matching their lists, reading into a read-only
                or short buffer, using a destroyed program; (`nvrtc.live()`: not destroyed)
The memory probe really moves data where both arrays are host memory (zero-copy), so the
harness's check of the result is a check of its launch parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from tests.fakes_cuda_probes.driver import make_driver
from tests.fakes_cuda_probes.gpu import FakeGpu, Spec
from tests.fakes_cuda_probes.nvrtc import make_nvrtc, parse_kernels, ptx_type


@dataclass
class FakeCudaProbes:
    gpu: FakeGpu
    driver: object
    nvrtc: object

    @property
    def violations(self) -> list[str]:
        return self.gpu.violations

    def rules_broken(self) -> set[str]:
        return {v.split(":", 1)[0] for v in self.gpu.violations}

    def leftovers(self) -> list[str]:
        return self.gpu.problems() + [f"{len(self.nvrtc.live())} NVRTC program(s) not destroyed"
                                      for _ in [0] if self.nvrtc.live()]


def make(spec: Spec | None = None, *, no_driver: bool = False) -> FakeCudaProbes:
    gpu = FakeGpu(spec)
    return FakeCudaProbes(gpu, make_driver(gpu, no_driver=no_driver), make_nvrtc(gpu.violations))


__all__ = ["FakeCudaProbes", "FakeGpu", "Spec", "make", "make_driver", "make_nvrtc",
           "parse_kernels", "ptx_type"]
