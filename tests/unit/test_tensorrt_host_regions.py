"""Shared-memory regions registered with CUDA: both driver bindings against the strict fake."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from edgesched.backends.tensorrt import cuda_streams
from edgesched.backends.tensorrt.host_regions import HostRegions
from tests.fakes_cuda.gpu import PRIMARY_HANDLE

PAGE = mmap.PAGESIZE


@pytest.fixture(params=["bindings", None], ids=["cuda-python", "libcuda"])
def driver(cuda, request):
    """(fake, driver) with the primary context retained and pushed on this thread."""
    fake = cuda.install(cuda_python=request.param)
    fake.gpu.retain()
    fake.gpu.ctx_push(PRIMARY_HANDLE)
    yield fake, cuda_streams.open_driver()
    fake.gpu.ctx_pop()
    fake.gpu.release_primary()


def _read_only_region(nbytes: int = 4 * PAGE) -> tuple[mmap.mmap, np.ndarray]:
    """An anonymous mapping written once, then seen read-only (as the server maps regions)."""
    region = mmap.mmap(-1, nbytes)
    region.write(np.arange(nbytes, dtype=np.uint32).astype(np.uint8).tobytes())
    view = np.frombuffer(region, np.uint8)
    view.flags.writeable = False
    return region, view


def test_an_input_inside_a_mapped_registration_is_read_in_place(driver):
    fake, drv = driver
    region, view = _read_only_region()
    regions = HostRegions(drv, mapped=True, supported=True, read_only=True)
    host = view.ctypes.data
    assert regions.register(host, view.nbytes)
    (call,) = fake.gpu.named("cuMemHostRegister")
    assert call.args[3] & 0x8 and call.args[3] & 0x2      # READ_ONLY | DEVICEMAP
    frame = view[PAGE:PAGE + 3 * 64].view(np.float32)      # an input at an offset
    address = regions.device_address(frame)
    assert address is not None and address != frame.ctypes.data   # a device address
    seen = fake.gpu.device_view(address, frame.nbytes, "test kernel")
    assert np.array_equal(seen.view(np.float32), frame)           # the region's own bytes
    assert not seen.flags.writeable                                # registered READ_ONLY
    assert regions.device_address(view[::2]) is None               # strided: copied instead
    assert regions.device_address(np.zeros(4, np.float32)) is None  # not in a region
    outside = view[-8:]
    assert regions.find(outside.ctypes.data, 16) is None           # runs past the end
    regions.unregister_all()
    assert fake.gpu.registered == {} and not fake.gpu.violations
    del frame, outside, seen, view
    region.close()


def test_a_discrete_gpu_registers_pinned_only_and_copies(driver):
    fake, drv = driver
    region, view = _read_only_region()
    regions = HostRegions(drv, mapped=False, supported=True, read_only=True)
    assert regions.register(view.ctypes.data, view.nbytes)
    assert not fake.gpu.registered[view.ctypes.data].flags & 0x2   # no DEVICEMAP
    assert regions.device_address(view[:64]) is None and regions.pinned(view[:64])
    regions.unregister(view.ctypes.data)
    assert fake.gpu.named("cuMemHostUnregister") and not fake.gpu.violations
    del view
    region.close()


@pytest.mark.parametrize("supported, read_only", [(False, True), (True, False)])
def test_a_device_without_the_attributes_leaves_regions_on_the_copy_path(driver, supported,
                                                                       read_only):
    fake, drv = driver
    region, view = _read_only_region()
    regions = HostRegions(drv, mapped=True, supported=supported, read_only=read_only)
    assert not regions.register(view.ctypes.data, view.nbytes)
    assert regions.device_address(view[:64]) is None and len(regions) == 0
    assert fake.gpu.named("cuMemHostRegister") == []              # not even tried
    del view
    region.close()


def test_a_refused_registration_is_the_copy_path_not_an_error(driver, caplog):
    fake, drv = driver
    fake.gpu.read_only_register_supported = False    # the attribute lied: the call fails
    region, view = _read_only_region()
    regions = HostRegions(drv, mapped=True, supported=True, read_only=True)
    assert not regions.register(view.ctypes.data, view.nbytes)
    assert not regions.register(view.ctypes.data, view.nbytes)
    assert len([r for r in caplog.records if "cannot be registered" in r.message]) == 1
    assert fake.gpu.registered == {}
    del view
    region.close()


def test_the_drivers_report_the_register_attributes(driver):
    fake, drv = driver
    fake.gpu.initialized = True
    assert drv.host_register_support(0) == (True, True)
    fake.gpu.read_only_register_supported = False
    assert drv.host_register_support(0) == (True, False)


def test_registering_twice_or_unregistering_a_stranger_fails_in_the_driver(driver):
    fake, drv = driver
    region, view = _read_only_region()
    host = view.ctypes.data
    drv.host_register(host, view.nbytes, 0x8)
    with pytest.raises(cuda_streams.CudaDriverError, match="ALREADY_REGISTERED"):
        drv.host_register(host + PAGE, PAGE, 0x8)
    with pytest.raises(cuda_streams.CudaDriverError, match="NOT_REGISTERED"):
        drv.host_unregister(host + PAGE)
    drv.host_unregister(host)
    del view
    region.close()
