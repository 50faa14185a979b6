"""The device's primary CUDA context, retained through pycuda and released balanced.

TensorRT runs on the runtime API, i.e. in the device's PRIMARY context; pycuda's `autoinit` or
`make_context` would make a second one. pycuda's semantics this module is written against
(src/cpp/cuda.hpp):
  - `Device.retain_primary_context()` returns a new Context object per call, each owning one
    retain; `push()` / `Context.pop()` keep pycuda's own per-thread stack in step with the
    driver's;
  - `Context.detach()` of a primary context calls cuDevicePrimaryCtxRelease, which never pops.
    When the context is current it is released and dropped from pycuda's stack but stays
    current in the driver; when it is not, detach pushes it first (on the retaining thread
    only; on any other thread it does nothing and the retain leaks).
So `release()` pushes, detaches (release while current: works on any thread) and then pops the
driver's stack itself (`Driver.ctx_pop`): nothing left pushed, nothing leaked, on every thread.
"""
from __future__ import annotations

import contextlib

from edgesched.backends.tensorrt import cuda_streams
from edgesched.errors import BackendUnavailable


def import_pycuda():
    try:
        import pycuda.driver as cuda  # never pycuda.autoinit: it makes a second context
    except ImportError:
        raise BackendUnavailable("pycuda is not importable: pip install pycuda (it builds on the "
                                 "Jetson), or use backend: onnxruntime") from None
    return cuda


class PrimaryContext:
    """One retain of device `device`'s primary context; `release()` exactly once."""

    def __init__(self, cuda, device: int, driver: cuda_streams.Driver):
        self._cuda, self._driver = cuda, driver
        cuda.init()
        self.device = cuda.Device(device)
        self._ctx = self.device.retain_primary_context()

    @property
    def retained(self) -> bool:
        return self._ctx is not None

    def push(self) -> None:
        self._ctx.push()

    def pop(self) -> None:
        self._cuda.Context.pop()

    @contextlib.contextmanager
    def current(self):
        """The primary context current on this thread for the block (push/pop are cheap)."""
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def release(self) -> None:
        """Give the retain back; the calling thread ends as it began. Idempotent."""
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        ctx.push()
        try:
            ctx.detach()                 # released while current: pycuda forgets it ...
        finally:
            self._driver.ctx_pop()       # ... and the driver's stack still holds it


def device_report(device: int = 0) -> str:
    """One line on the CUDA device for `edgesched selftest`: name, SMs, compute capability,
    integrated or discrete, driver version, stream priority range."""
    cuda = import_pycuda()
    driver = cuda_streams.open_driver()
    primary = PrimaryContext(cuda, device, driver)
    try:
        with primary.current():
            least, greatest = driver.priority_range()
    finally:
        primary.release()
    dev, attr = primary.device, cuda.device_attribute
    major, minor = dev.compute_capability()
    version = cuda.get_driver_version()
    kind = "integrated (zero-copy)" if dev.get_attribute(attr.INTEGRATED) else "discrete"
    return (f"{dev.name()}, {dev.get_attribute(attr.MULTIPROCESSOR_COUNT)} SMs, compute "
            f"{major}.{minor}, {kind}, driver {version // 1000}.{version % 1000 // 10}, stream "
            f"priorities {greatest} (highest) .. {least}")
