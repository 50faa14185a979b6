"""Inputs in a client's registered shared-memory region, on the TensorRT backend (fakes).

Integrated GPU (Jetson): the engine is bound to the region's device address: no staging buffer
and no copy. Discrete: one async copy straight from the region into device memory. Where the
device cannot register host memory, the region's inputs are copied as any other input.
"""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from tests.unit.tensorrt_helpers import inputs, run_engine, two_slice_model

PAGE = mmap.PAGESIZE
STRIDE = 256          # frames 256-aligned in the region: TensorRT binds only such addresses


def _region_with(frames: list[np.ndarray]) -> tuple[mmap.mmap, list[np.ndarray]]:
    """A mapping holding `frames` back to back, and read-only views of each (as shm.py's)."""
    region = mmap.mmap(-1, PAGE)
    for k, frame in enumerate(frames):
        region[k * STRIDE:k * STRIDE + frame.nbytes] = frame.tobytes()
    whole = np.frombuffer(region, np.uint8)
    whole.flags.writeable = False
    views = [whole[k * STRIDE:k * STRIDE + f.nbytes].view(f.dtype).reshape(f.shape)
             for k, f in enumerate(frames)]
    return region, views


def _serve_from_region(cuda, tmp_path, **install):
    fake = cuda.install(**install)
    backend = cuda.make(streams=2)
    frames = inputs(3)
    region, views = _region_with(frames)
    address = np.frombuffer(region, np.uint8, 1).ctypes.data
    registered = backend.map_host(address, PAGE)
    results = run_engine(backend, two_slice_model(tmp_path / "m"), views)
    outputs = [results[k].outputs["y"].copy() for k in range(len(frames))]
    copies = [c for c in fake.gpu.named("cuMemcpyHtoDAsync")]
    bound = [c.args[2] for c in fake.gpu.named("set_tensor_address") if c.args[1] == "x"]
    device = fake.gpu.registered[address].device_ptr if registered else None
    backend.unmap_host(address)
    return fake, registered, frames, outputs, (copies, bound, device), address, (region, views)


def test_integrated_binds_the_region_itself_and_copies_nothing(cuda, tmp_path):
    fake, registered, frames, outputs, (copies, bound, device), address, keep = \
        _serve_from_region(cuda, tmp_path, integrated=True)
    assert registered
    for frame, out in zip(frames, outputs):
        np.testing.assert_array_equal(out, frame + 11.0)    # read from the region, in place
    assert copies == []
    assert sorted(bound) == [device + k * STRIDE for k in range(3)]   # bound at the region itself
    (reg,) = fake.gpu.named("cuMemHostRegister")
    assert reg.args[1] == address and reg.args[3] & 0x2 and reg.args[3] & 0x8
    assert fake.gpu.registered == {} and fake.gpu.named("cuMemHostUnregister")
    assert not fake.gpu.violations


def test_discrete_copies_once_straight_from_the_region(cuda, tmp_path):
    fake, registered, frames, outputs, (copies, bound, device), address, keep = \
        _serve_from_region(cuda, tmp_path, integrated=False)
    assert registered
    for frame, out in zip(frames, outputs):
        np.testing.assert_array_equal(out, frame + 11.0)
    sources = sorted(c.args[2] for c in copies)
    assert sources == [address + k * STRIDE for k in range(3)]   # one copy each, from the region
    assert device == 0                                        # pinned only: no DEVICEMAP
    assert not fake.gpu.violations


def test_without_register_support_the_region_is_copied_like_any_input(cuda, tmp_path,
                                                                      monkeypatch):
    from tests.fakes_cuda.gpu import FakeGpu
    original = FakeGpu.__init__

    def no_read_only(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.read_only_register_supported = False
    monkeypatch.setattr(FakeGpu, "__init__", no_read_only)
    fake, registered, frames, outputs, (copies, bound, device), address, keep = \
        _serve_from_region(cuda, tmp_path, integrated=True)
    assert not registered and fake.gpu.named("cuMemHostRegister") == []
    for frame, out in zip(frames, outputs):
        np.testing.assert_array_equal(out, frame + 11.0)    # staged by copy, still right
    assert not fake.gpu.violations


@pytest.mark.parametrize("integrated", [True, False])
def test_closing_the_backend_unregisters_what_the_server_left(cuda, integrated):
    fake = cuda.install(integrated=integrated)
    backend = cuda.make(streams=1)
    region = mmap.mmap(-1, PAGE)
    address = np.frombuffer(region, np.uint8, 1).ctypes.data
    assert backend.map_host(address, PAGE)
    backend.close()
    assert fake.gpu.registered == {} and not fake.gpu.violations
    region.close()


def test_a_server_on_tensorrt_binds_a_clients_region_in_place(cuda, tmp_path):
    """Client -> socket -> server -> TensorRT (fakes): the frame is never copied on the way."""
    from multiprocessing import shared_memory

    from edgesched.config import parse_config
    from edgesched.serve.client import Client
    from edgesched.serve.server import Server
    fake = cuda.install(integrated=True)
    model = two_slice_model(tmp_path / "m")
    endpoint = f"ipc://{tmp_path}/s.sock"
    config = parse_config({"device": {"backend": "onnxruntime", "streams": 2},
                           "server": {"endpoint": endpoint}, "telemetry": "none",
                           "models": [{"name": "twostep", "path": str(model), "slo_ms": 100}]},
                          "<test>", tmp_path)
    frame = inputs(1)[0]
    shm = shared_memory.SharedMemory(create=True, size=PAGE)
    try:
        with Server(config, backend=cuda.make(streams=2)) as server, \
                Client(endpoint, timeout_s=10.0) as client:
            reg = client.register(shm)
            x = client.shared_array(reg, frame.shape, np.float32, offset=256)
            x[:] = frame
            np.testing.assert_array_equal(client.infer("twostep", {"x": x})["y"], frame + 11.0)
            (registration,) = fake.gpu.registered.values()
            bound = [c.args[2] for c in fake.gpu.named("set_tensor_address") if c.args[1] == "x"]
            assert bound == [registration.device_ptr + 256]
            # 64 bytes in: not 256-aligned, which TensorRT refuses: staged by copy instead
            odd = client.shared_array(reg, frame.shape, np.float32, offset=64)
            odd[:] = frame + 1
            np.testing.assert_array_equal(client.infer("twostep", {"x": odd})["y"],
                                          frame + 12.0)
            bound = [c.args[2] for c in fake.gpu.named("set_tensor_address") if c.args[1] == "x"]
            inside = registration.device_ptr <= bound[-1] < registration.device_ptr + PAGE
            assert not inside                        # a pooled staging buffer, not the region
            del odd
            client.unregister(reg)
            client.ping()                   # the unregister has been handled
            assert fake.gpu.registered == {}
            del x
        del server
    finally:
        shm.close()
        shm.unlink()
    assert not fake.gpu.violations


def test_a_region_given_up_while_a_launch_reads_it_stays_registered_until_it_ends(cuda,
                                                                                 tmp_path):
    """A launch that overran its timeout was answered, so the server may give the region up
    while the kernel still reads it: CUDA keeps it registered until that request is freed."""
    fake = cuda.install(integrated=True)
    backend = cuda.make(streams=1)
    frame = inputs(1)[0]
    region, (view,) = _region_with([frame])
    address = np.frombuffer(region, np.uint8, 1).ctypes.data
    assert backend.map_host(address, PAGE)
    backend.load("twostep", two_slice_model(tmp_path / "m"), 1)
    backend.stage(7, "twostep", {"x": view})       # bound to the region, not yet freed
    backend.unmap_host(address)                     # the server gives the region up
    assert address in fake.gpu.registered           # still registered: request 7 holds it
    backend.release(7)                              # the request ends
    assert fake.gpu.registered == {} and fake.gpu.named("cuMemHostUnregister")
    assert not fake.gpu.violations
    del view
