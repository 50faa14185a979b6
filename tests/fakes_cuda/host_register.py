"""The fake GPU's cuMemHostRegister: host pages (a client's shared memory) read in place.

Strict where the driver is: the device attribute must allow it (READ_ONLY needs its own), a
range is registered once, only a DEVICEMAP registration has a device address (distinct from the
host address, so code that mixes the two up fails), and unregistering a range that a running
execution context reads is a violation.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

SUCCESS, INVALID_VALUE, INVALID_CONTEXT = 0, 1, 201
ALREADY_REGISTERED, NOT_REGISTERED = 712, 713   # CUDA_ERROR_HOST_MEMORY_(ALREADY|NOT)_REGISTERED
DEVICEMAP, HOST_READ_ONLY = 0x2, 0x8            # CU_MEMHOSTREGISTER_DEVICEMAP / _READ_ONLY


@dataclass
class Registration:
    """Host memory registered with cuMemHostRegister: read through its pages, in place."""
    host_ptr: int
    nbytes: int
    flags: int
    device_ptr: int                   # 0 without DEVICEMAP
    array: np.ndarray                 # a view of the caller's pages (read-only if READ_ONLY)



class HostRegisterMixin:
    """FakeGpu's registrations (it provides record, need_context, violate, contexts and
    _addresses)."""

    def _registered_at(self, ptr: int, nbytes: int, device: bool) -> np.ndarray | None:
        """The bytes [ptr, ptr + nbytes) of a registration (by device or host address)."""
        for reg in list(self.registered.values()):
            base = reg.device_ptr if device else reg.host_ptr
            if base and base <= ptr and ptr + nbytes <= base + reg.nbytes:
                return reg.array[ptr - base:ptr - base + nbytes]
        return None

    def cu_host_register(self, via: str, host: int, nbytes: int, flags: int) -> int:
        self.record("cuMemHostRegister", via, host, int(nbytes), int(flags))
        if not self.need_context("cuMemHostRegister"):
            return INVALID_CONTEXT
        if not self.host_register_supported or (flags & HOST_READ_ONLY and
                                                not self.read_only_register_supported):
            return INVALID_VALUE          # the driver's answer where the attribute is 0
        if nbytes <= 0 or not host:
            return INVALID_VALUE
        for reg in self.registered.values():
            if host < reg.host_ptr + reg.nbytes and reg.host_ptr < host + nbytes:
                return ALREADY_REGISTERED
        array = np.ctypeslib.as_array((ctypes.c_uint8 * int(nbytes)).from_address(host))
        if flags & HOST_READ_ONLY:
            array.flags.writeable = False   # a kernel writing into it fails the test loudly
        device = next(self._addresses) if flags & DEVICEMAP else 0
        self.registered[host] = Registration(host, int(nbytes), int(flags), device, array)
        return SUCCESS

    def cu_host_device_pointer(self, via: str, host: int, flags: int) -> tuple[int, int]:
        self.record("cuMemHostGetDevicePointer", via, host, int(flags))
        self.need_context("cuMemHostGetDevicePointer")
        reg = self.registered.get(host)
        if flags != 0 or reg is None or not reg.device_ptr:
            return INVALID_VALUE, 0       # not registered with DEVICEMAP (or nonzero flags)
        return SUCCESS, reg.device_ptr

    def cu_host_unregister(self, via: str, host: int) -> int:
        self.record("cuMemHostUnregister", via, host)
        self.need_context("cuMemHostUnregister")
        reg = self.registered.get(host)
        if reg is None:
            return NOT_REGISTERED
        for context in self.contexts:
            if context.running() and any(reg.device_ptr <= a < reg.device_ptr + reg.nbytes
                                         for a in context.addresses.values() if reg.device_ptr):
                self.violate(f"host memory {host:#x} unregistered while execution context "
                             f"{context.id}, which reads it, runs")
        del self.registered[host]
        return SUCCESS
