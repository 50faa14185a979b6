"""The CUDA driver calls the harness makes, through cuda-python alone (no TensorRT, no pycuda).

A thin wrapper, separate from ../cuda_streams.py (the serving path's driver calls) because the
harness needs calls that module has no reason to carry: modules, launches, timing events,
occupancy, mapped host memory and device attributes. cuda-python returns (CUresult, *outputs);
`call` checks the status and unwraps the outputs. Handles stay the binding's objects.

`Cuda` holds one device's PRIMARY context (the one TensorRT and edgesched's runtime use),
retained and pushed on the calling thread by `open` and popped and released once by `close`,
which also destroys everything made through it, newest first. All calls come from that thread.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from edgesched.backends.tensorrt import cuda_streams
from edgesched.backends.tensorrt.cuda_streams import CudaDriverError
from edgesched.errors import BackendUnavailable

CU_EVENT_DEFAULT = 0x0
CU_EVENT_BLOCKING_SYNC = 0x1       # a host wait sleeps in the driver instead of spinning
CU_EVENT_DISABLE_TIMING = 0x2      # cheaper; cuEventElapsedTime refuses such an event
TIMING_EVENT = CU_EVENT_BLOCKING_SYNC                              # timed, and waits sleep
DONE_EVENT = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING      # what the runtime waits on
CU_STREAM_NON_BLOCKING = 0x1       # no implicit sync with the legacy default stream
CU_MEMHOSTALLOC_DEVICEMAP = 0x2    # pinned host memory mapped into the device's address space
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_NOT_READY = 600
INSTALL_HINT = "pip install 'edgesched[cuda]' (cuda-python and NVRTC)"


def import_driver():
    """cuda-python's driver module (the harness needs no TensorRT, pycuda or ctypes libcuda)."""
    driver = cuda_streams.import_cuda_python()
    if driver is None:
        raise BackendUnavailable(f"cuda-python is not installed: {INSTALL_HINT}")
    return driver


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: tuple[int, int]
    sms: int
    integrated: bool                    # shares DRAM with the CPU (every Jetson)
    l2_bytes: int
    clock_khz: int                      # the SM clock's maximum (DVFS may run lower)
    memory_clock_khz: int
    bus_width_bits: int
    max_threads_per_sm: int
    max_threads_per_block: int
    max_grid: tuple[int, int, int]
    max_block: tuple[int, int, int]
    can_map_host_memory: bool
    unified_addressing: bool
    concurrent_kernels: bool
    driver_version: str                 # e.g. "12.6"
    binding: str                        # which cuda-python module, and its version

    @property
    def peak_bandwidth_gbs(self) -> float | None:
        """DRAM peak from the memory clock (double data rate) and bus width, as the driver
        reports them; None if unknown. On a Jetson these attributes need not describe the EMC:
        compare the memory probe's GB/s with the module's figure, not only with this."""
        if not (self.memory_clock_khz and self.bus_width_bits):
            return None
        return 2 * self.memory_clock_khz * 1e3 * self.bus_width_bits / 8 / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        d["peak_bandwidth_gbs"] = self.peak_bandwidth_gbs
        return d


class Cuda:
    def __init__(self, module=None, ordinal: int = 0):
        self._cu = module if module is not None else import_driver()
        self.ordinal = ordinal
        self.device = self.context = None
        self._undo: list[tuple[str, object]] = []     # (destroy call, handle), oldest first
        self._pushed = self._retained = False

    # --- calls ------------------------------------------------------------------------------

    def call(self, fn: str, *args):
        result = getattr(self._cu, fn)(*args)
        status = result[0]
        if int(status) != 0:
            raise CudaDriverError(f"{fn} failed: {getattr(status, 'name', status)}")
        return result[1] if len(result) == 2 else (result[1:] or None)

    def status(self, fn: str, *args) -> int:
        """The bare CUresult of a call whose 'error' is an answer (cuEventQuery's NOT_READY)."""
        return int(getattr(self._cu, fn)(*args)[0])

    def enum(self, kind: str, name: str):
        return getattr(getattr(self._cu, kind), name)

    # --- the primary context ----------------------------------------------------------------

    def open(self) -> Cuda:
        try:
            status = self._cu.cuInit(0)[0]
        except Exception as e:   # the binding raises (its own type) when libcuda.so.1 is absent
            raise BackendUnavailable("no NVIDIA driver: libcuda.so.1 does not load "
                                     f"({(str(e).splitlines() or [type(e).__name__])[0]})") \
                from None
        if int(status) == CUDA_ERROR_NO_DEVICE:
            raise BackendUnavailable("no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)")
        if int(status) != 0:
            raise BackendUnavailable(f"CUDA does not initialize (cuInit: "
                                     f"{getattr(status, 'name', status)})")
        try:
            count = int(self.call("cuDeviceGetCount"))
            if count <= self.ordinal:
                raise BackendUnavailable(f"no CUDA device {self.ordinal} ({count} found)")
            self.device = self.call("cuDeviceGet", self.ordinal)
            self.context = self.call("cuDevicePrimaryCtxRetain", self.device)
            self._retained = True
            self.call("cuCtxPushCurrent", self.context)
            self._pushed = True
        except CudaDriverError as e:    # e.g. the GPU is held in exclusive mode elsewhere
            self.close()
            raise BackendUnavailable(f"the GPU's primary context is unavailable ({e})") from None
        return self

    def current_is_primary(self) -> bool:
        return int(self.call("cuCtxGetCurrent") or 0) == int(self.context)

    def primary_active(self) -> bool:
        _flags, active = self.call("cuDevicePrimaryCtxGetState", self.device)
        return bool(active)

    def close(self) -> list[str]:
        """Destroy everything made here (newest first), pop and release the primary context.
        Never raises (it runs after failures too): returns the calls that failed."""
        failed = []
        while self._undo:
            fn, handle = self._undo.pop()
            failed += self._try(fn, handle)
        if self._pushed:
            self._pushed = False
            failed += self._try("cuCtxPopCurrent")
        if self._retained:
            self._retained = False
            failed += self._try("cuDevicePrimaryCtxRelease", self.device)
        return failed

    def _try(self, fn: str, *args) -> list[str]:
        try:
            self.call(fn, *args)
            return []
        except Exception as e:
            return [str(e)]

    def __enter__(self) -> Cuda:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the device -------------------------------------------------------------------------

    def attribute(self, name: str, default: int | None = None) -> int:
        """A device attribute; `default` where this binding or driver does not have it (the
        clock-rate attributes are deprecated in CUDA 12 and may go)."""
        try:
            attrib = self.enum("CUdevice_attribute", f"CU_DEVICE_ATTRIBUTE_{name}")
            return int(self.call("cuDeviceGetAttribute", attrib, self.device))
        except (AttributeError, CudaDriverError):
            if default is None:
                raise
            return default

    def info(self) -> DeviceInfo:
        a = self.attribute
        raw = self.call("cuDeviceGetName", 256, self.device)
        version = int(self.call("cuDriverGetVersion"))
        binding = getattr(self._cu, "__name__", "cuda-python")
        package = sys.modules.get(binding.rpartition(".")[0]) \
            if binding.startswith("cuda.bindings.") else None
        if getattr(package, "__version__", None):
            binding += f" {package.__version__}"
        return DeviceInfo(
            name=bytes(raw).split(b"\0")[0].decode(errors="replace").strip(),
            compute_capability=(a("COMPUTE_CAPABILITY_MAJOR"), a("COMPUTE_CAPABILITY_MINOR")),
            sms=a("MULTIPROCESSOR_COUNT"), integrated=bool(a("INTEGRATED")),
            l2_bytes=a("L2_CACHE_SIZE", 0), clock_khz=a("CLOCK_RATE", 0),
            memory_clock_khz=a("MEMORY_CLOCK_RATE", 0),
            bus_width_bits=a("GLOBAL_MEMORY_BUS_WIDTH", 0),
            max_threads_per_sm=a("MAX_THREADS_PER_MULTIPROCESSOR"),
            max_threads_per_block=a("MAX_THREADS_PER_BLOCK"),
            max_grid=(a("MAX_GRID_DIM_X"), a("MAX_GRID_DIM_Y"), a("MAX_GRID_DIM_Z")),
            max_block=(a("MAX_BLOCK_DIM_X"), a("MAX_BLOCK_DIM_Y"), a("MAX_BLOCK_DIM_Z")),
            can_map_host_memory=bool(a("CAN_MAP_HOST_MEMORY")),
            unified_addressing=bool(a("UNIFIED_ADDRESSING", 0)),
            concurrent_kernels=bool(a("CONCURRENT_KERNELS", 0)),
            driver_version=f"{version // 1000}.{version % 1000 // 10}", binding=binding)

    # --- streams and events -----------------------------------------------------------------

    def priority_range(self) -> tuple[int, int]:
        """(least, greatest); greatest is numerically lowest: lower number = higher priority."""
        least, greatest = self.call("cuCtxGetStreamPriorityRange")
        return int(least), int(greatest)

    def stream(self, priority: int):
        stream = self.call("cuStreamCreateWithPriority", CU_STREAM_NON_BLOCKING, priority)
        self._undo.append(("cuStreamDestroy", stream))
        return stream

    def stream_priority(self, stream) -> int:
        return int(self.call("cuStreamGetPriority", stream))

    def event(self, flags: int = TIMING_EVENT):
        event = self.call("cuEventCreate", flags)
        self._undo.append(("cuEventDestroy", event))
        return event

    def destroy_event(self, event) -> None:
        """Destroy one event made by `event` now rather than at close."""
        self._undo.remove(("cuEventDestroy", event))
        self.call("cuEventDestroy", event)

    def record(self, event, stream) -> None:
        self.call("cuEventRecord", event, stream)

    def wait(self, event) -> None:
        self.call("cuEventSynchronize", event)

    def done(self, event) -> bool:
        status = self.status("cuEventQuery", event)
        if status not in (0, CUDA_ERROR_NOT_READY):
            raise CudaDriverError(f"cuEventQuery failed: CUresult {status}")
        return status == 0

    def elapsed_ms(self, start, end) -> float:
        """Device time from `start` to `end` (both recorded, completed, timing-enabled)."""
        fn = "cuEventElapsedTime" if hasattr(self._cu, "cuEventElapsedTime") \
            else "cuEventElapsedTime_v2"
        return float(self.call(fn, start, end))

    # --- memory -----------------------------------------------------------------------------

    def alloc(self, nbytes: int):
        pointer = self.call("cuMemAlloc", nbytes)
        self._undo.append(("cuMemFree", pointer))
        return pointer

    def host_mapped(self, nbytes: int) -> tuple[int, object]:
        """(host address, device pointer) of zero-copy pinned host memory."""
        host = self.call("cuMemHostAlloc", nbytes, CU_MEMHOSTALLOC_DEVICEMAP)
        self._undo.append(("cuMemFreeHost", host))
        return int(host), self.call("cuMemHostGetDevicePointer", host, 0)

    # --- modules and launches ---------------------------------------------------------------

    def load(self, image: bytes):
        module = self.call("cuModuleLoadData", image)
        self._undo.append(("cuModuleUnload", module))
        return module

    def function(self, module, name: str):
        return self.call("cuModuleGetFunction", module, name.encode())

    def registers(self, function) -> int:
        attrib = self.enum("CUfunction_attribute", "CU_FUNC_ATTRIBUTE_NUM_REGS")
        return int(self.call("cuFuncGetAttribute", attrib, function))

    def blocks_per_sm(self, function, block_threads: int) -> int:
        return int(self.call("cuOccupancyMaxActiveBlocksPerMultiprocessor", function,
                             block_threads, 0))

    def launch(self, function, grid: int, block: int, stream, params: tuple[tuple, tuple]):
        """A 1-D launch; params as ProbeKernel.pack makes them; no dynamic shared memory."""
        self.call("cuLaunchKernel", function, grid, 1, 1, block, 1, 1, 0, stream, params, 0)
