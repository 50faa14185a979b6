"""Request tensors' memory for the TensorRT backend: pooled, zero-copy where the GPU shares DRAM.

pycuda is handed in (`Pool(cuda, zero_copy)`), so this module imports no device library itself.
"""
from __future__ import annotations

import numpy as np

ALIGN = 256                        # pooled buffer sizes round up to this (TensorRT's alignment)
BORROWED = object()               # key[0] of a buffer over a client's region (Pool.borrow)


class Buffer:
    """A pooled allocation. `ptr` is what TensorRT reads and writes. `host` (uint8) is the CPU
    side of a tensor the request hands in or out: the same memory when mapped (zero-copy), a
    pinned staging copy beside device memory on a discrete GPU; None for device-only tensors."""

    __slots__ = ("key", "ptr", "host", "host_ptr", "allocations")

    def __init__(self, key, ptr: int, host: np.ndarray | None, allocations: tuple):
        self.key, self.ptr, self.host, self.allocations = key, ptr, host, allocations
        self.host_ptr = host.ctypes.data if host is not None else 0


class Pool:
    """Buffers reused across requests by (host-visible, capacity): allocating pinned memory
    costs milliseconds, far more than a slice. Used by the engine thread only."""

    def __init__(self, cuda, zero_copy: bool):
        self._cuda, self._zero_copy = cuda, zero_copy
        self._free: dict[tuple[bool, int], list[Buffer]] = {}
        self.buffers: list[Buffer] = []

    def take(self, host: bool, nbytes: int) -> Buffer:
        key = (host, -(-max(nbytes, 1) // ALIGN) * ALIGN)
        free = self._free.get(key)
        if free:
            return free.pop()
        cuda, capacity = self._cuda, key[1]
        if host and self._zero_copy:          # integrated GPU: one pinned, device-mapped buffer
            array = cuda.pagelocked_empty(capacity, np.uint8,
                                          mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            buf = Buffer(key, int(array.base.get_device_pointer()), array, (array.base,))
        elif host:                            # discrete: device memory + pinned staging copy
            device = cuda.mem_alloc(capacity)
            array = cuda.pagelocked_empty(capacity, np.uint8)
            buf = Buffer(key, int(device), array, (device, array.base))
        else:
            device = cuda.mem_alloc(capacity)
            buf = Buffer(key, int(device), None, (device,))
        self.buffers.append(buf)
        return buf

    def borrow(self, host: np.ndarray, device_ptr: int | None) -> Buffer:
        """A buffer over memory the pool does not own (a client's registered region, see
        host_regions.py): read in place at `device_ptr`, or (None) copied from into a pooled
        device buffer. `give` returns only that device buffer; the region stays the client's."""
        raw = host.reshape(-1).view(np.uint8)
        device = None if device_ptr is not None else self.take(False, raw.nbytes)
        return Buffer((BORROWED, device), device_ptr if device is None else device.ptr, raw, ())

    def give(self, buf: Buffer) -> None:
        if buf.key[0] is BORROWED:
            if buf.key[1] is not None:
                self.give(buf.key[1])
            return
        self._free.setdefault(buf.key, []).append(buf)

    def free_all(self) -> None:
        for buf in self.buffers:
            for allocation in buf.allocations:
                allocation.free()
        self.buffers, self._free = [], {}


class Tensor:
    __slots__ = ("buf", "dtype", "shape", "nbytes", "dirty")

    def __init__(self, buf: Buffer, dtype: np.dtype, shape: tuple[int, ...]):
        self.buf, self.dtype, self.shape = buf, dtype, shape
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.dirty = False          # host side newer than the device side (staging copies only)

    def view(self) -> np.ndarray:
        return self.buf.host[:self.nbytes].view(self.dtype).reshape(self.shape)
