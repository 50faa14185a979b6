"""Clients' shared-memory regions registered with CUDA, so a request's inputs are read in place.

A region the server maps (serve/shm.py) is registered here with `cuMemHostRegister`: pinned,
and with DEVICEMAP on an integrated GPU (Jetson: one DRAM, I/O coherent), where the engine is
bound straight to the region's device address: no copy from the camera process to the GPU.
On a discrete GPU the region is registered pinned only, and the input is one asynchronous
copy from it into device memory (no pageable staging copy first). A region the driver cannot
register (no HOST_REGISTER_SUPPORTED, or a read-only mapping on a device without
READ_ONLY_HOST_REGISTER_SUPPORTED) is remembered as such: its inputs take the copy path, as
any other input does. The server maps regions PROT_READ, so registrations pass READ_ONLY.

Lifetime: registered when the server maps a region, unregistered when it gives the region up,
before unmapping it (the driver must not hold pages that are gone). A request's claim keeps a
region mapped until its reply is sent, normally after its last launch has completed; a launch
that overran the launch timeout is answered while it may still run, so each tensor bound to a
region is counted, and a region given up while one is still out is unregistered when the last
comes back (its request freed). Only inputs lying 256-byte aligned are bound in place
(TensorRT's rule for tensor addresses); others are copied.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np

from edgesched.backends.tensorrt.memory import BORROWED, Tensor

log = logging.getLogger("edgesched.tensorrt")

CU_MEMHOSTREGISTER_PORTABLE = 0x1
CU_MEMHOSTREGISTER_DEVICEMAP = 0x2
CU_MEMHOSTREGISTER_READ_ONLY = 0x8
BIND_ALIGN = 256     # bytes: setTensorAddress needs at least this alignment (NvInferRuntime.h)


@dataclass(frozen=True)
class Registered:
    host: int            # first byte's host address
    nbytes: int
    device: int          # the device address of `host` (0: pinned for copies only)


class HostRegions:
    """The registrations of one backend. Engine thread only (with the context current)."""

    def __init__(self, driver, *, mapped: bool, supported: bool, read_only: bool):
        """mapped: bind inputs to the device address (integrated GPU); supported /
        read_only: HOST_REGISTER_SUPPORTED / READ_ONLY_HOST_REGISTER_SUPPORTED."""
        self._driver, self._mapped = driver, mapped
        self._usable = supported and read_only
        self._starts: list[int] = []
        self._regions: list[Registered] = []
        self._warned = False
        # region start -> tensors bound to it now; regions the server gave up while some were
        # (a launch that overran its timeout may still read one): unregistered when they end
        self._lent: dict[int, int] = {}
        self._deferred: set[int] = set()

    def register(self, host: int, nbytes: int) -> bool:
        """Register [host, host + nbytes); False when it stays unregistered (copy path)."""
        if not self._usable or nbytes <= 0 or self.find(host, 1) is not None:
            return False
        flags = CU_MEMHOSTREGISTER_READ_ONLY | CU_MEMHOSTREGISTER_PORTABLE | \
            (CU_MEMHOSTREGISTER_DEVICEMAP if self._mapped else 0)
        try:
            device = self._driver.host_register(host, nbytes, flags)
        except RuntimeError as e:   # CudaDriverError: the region is served by copies instead
            if not self._warned:
                self._warned = True
                log.warning("shared-memory regions cannot be registered with CUDA (%s): their "
                            "inputs are copied", e)
            return False
        at = bisect.bisect(self._starts, host)
        self._starts.insert(at, host)
        self._regions.insert(at, Registered(host, nbytes, device if self._mapped else 0))
        return True

    def unregister(self, host: int, force: bool = False) -> None:
        at = bisect.bisect_left(self._starts, host)
        if at == len(self._starts) or self._starts[at] != host:
            return
        if self._lent.get(host) and not force:
            self._deferred.add(host)       # a launch still reads it: when the last one ends
            return
        del self._starts[at]
        self._regions.pop(at)
        self._lent.pop(host, None)
        self._deferred.discard(host)
        self._driver.host_unregister(host)

    def unregister_all(self) -> None:
        """Everything (the backend is closing: no launch runs any more)."""
        for region in list(self._regions):
            self.unregister(region.host, force=True)

    def lend(self, region: Registered) -> None:
        """A tensor is bound to `region` (give it back with `returned`)."""
        self._lent[region.host] = self._lent.get(region.host, 0) + 1

    def returned(self, host: int) -> None:
        """A tensor bound at host address `host` is done with; a region given up meanwhile
        is unregistered now if that was its last."""
        region = self.find(host, 1)
        if region is None:
            return
        left = self._lent.get(region.host, 0) - 1
        self._lent[region.host] = max(left, 0)
        if left <= 0 and region.host in self._deferred:
            self.unregister(region.host)

    def find(self, host: int, nbytes: int) -> Registered | None:
        """The registration holding all of [host, host + nbytes), if any."""
        at = bisect.bisect(self._starts, host) - 1
        if at < 0:
            return None
        region = self._regions[at]
        return region if host + nbytes <= region.host + region.nbytes else None

    def device_address(self, array: np.ndarray) -> int | None:
        """Where the GPU reads `array` in place: its device address when it lies, C-contiguous,
        inside a mapped registration; else None (it is copied)."""
        if not self._mapped or not array.flags.c_contiguous:
            return None
        host = array.ctypes.data
        region = self.find(host, array.nbytes)
        return None if region is None else region.device + (host - region.host)

    def pinned(self, array: np.ndarray) -> bool:
        """`array` lies, C-contiguous, in a registration: an async copy may read it directly."""
        return array.flags.c_contiguous and self.find(array.ctypes.data, array.nbytes) is not None

    def __len__(self) -> int:
        return len(self._regions)


class HostRegionsMixin:
    """TensorRTBackend's side: the server hands it each region it maps (serve/shm.py), and
    `stage` binds an input lying in one in place. Uses the backend's _driver, _pool,
    _current(), zero_copy and device."""

    _host: HostRegions | None = None

    def _open_host_regions(self) -> None:
        try:
            supported, read_only = self._driver.host_register_support(self.device)
        except Exception as e:          # an old driver without the attributes: copies only
            log.info("host memory registration unavailable: %s", e)
            supported = read_only = False
        self._host = HostRegions(self._driver, mapped=self.zero_copy, supported=supported,
                                 read_only=read_only)

    def map_host(self, address: int, nbytes: int) -> bool:
        """A region the server mapped: registered with CUDA (True), or left to copies."""
        if self._host is None:
            return False
        with self._current():
            return self._host.register(address, nbytes)

    def unmap_host(self, address: int) -> None:
        """The server gives the region up (before unmapping it; the mapping itself stays while
        a tensor of ours views it). Unregistered now, or when the last launch reading it ends
        (one that overran its timeout may still run)."""
        if self._host is not None and len(self._host):
            with self._current():
                self._host.unregister(address)

    def _give(self, buf) -> None:
        """A request's buffer goes back: to the pool, and a borrowed one to its region."""
        if buf.key[0] is BORROWED and self._host is not None:
            with self._current():
                self._host.returned(buf.host_ptr)
        self._pool.give(buf)

    def _in_place(self, array: np.ndarray, dtype: np.dtype):
        """A Tensor over `array` where it lies in a registered region and needs no cast: the
        engine reads it there (integrated), or one async copy from it fills a pooled device
        buffer (discrete; `dirty`). None: stage it by copying as any other input."""
        host = self._host
        if host is None or not len(host) or array.dtype != dtype or not array.nbytes:
            return None
        if self.zero_copy:
            address = host.device_address(array)
            if address is None or address % BIND_ALIGN:   # TensorRT binds 256-aligned only
                return None
            tensor = Tensor(self._pool.borrow(array, address), dtype, array.shape)
        elif host.pinned(array):
            tensor = Tensor(self._pool.borrow(array, None), dtype, array.shape)
            tensor.dirty = True
        else:
            return None
        host.lend(host.find(array.ctypes.data, array.nbytes))
        return tensor
