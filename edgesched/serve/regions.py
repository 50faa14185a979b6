"""Shared-memory tensors, the client's side: the regions a Client registered, and where an array
lives in them (serve/shm.py is the server's side and states the ownership contract).

An array whose bytes lie inside a registered region (a view of `SharedMemory.buf`, e.g. from
`Client.shared_array`) is sent by reference: (region, offset, dtype, shape), no frame. Other
arrays travel as frames, as before. Only C-contiguous little-endian arrays of a served dtype
go by reference; anything else is copied into a frame (a strided view of a region, say).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edgesched import dtypes
from edgesched.errors import InvalidInput

_SERVED = {t.np_dtype for t in dtypes.TYPES}


@dataclass(frozen=True)
class Region:
    name: str              # the POSIX shared-memory name (/dev/shm/NAME)
    address: int           # where this process maps it
    nbytes: int
    shm: object            # the multiprocessing.shared_memory.SharedMemory: keeps it mapped
    writable: bool = False  # registered so the server may write outputs into it


class ClientRegions:
    """Thread-safe: one table per Client, shared by its per-thread connections."""

    def __init__(self):
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def add(self, shm, writable: bool = False) -> Region:
        buf = getattr(shm, "buf", None)
        name = getattr(shm, "name", None)
        if buf is None or not isinstance(name, str):
            raise InvalidInput("register() takes a multiprocessing.shared_memory.SharedMemory")
        view = np.frombuffer(buf, np.uint8)
        region = Region(name.lstrip("/"), view.ctypes.data, view.nbytes, shm, bool(writable))
        del view                     # no export left behind: the caller may close() it later
        with self._lock:
            self._regions[region.name] = region
        return region

    def __bool__(self) -> bool:
        return bool(self._regions)

    def remove(self, name: str) -> None:
        with self._lock:
            self._regions.pop(name, None)

    def get(self, name: str) -> Region | None:
        with self._lock:
            return self._regions.get(name)

    def tracking(self) -> tuple[object, set[str]]:
        """(locate, used): a locate for wire.encode_infer that records the regions it named
        (None when nothing is registered: every array goes as a frame)."""
        used: set[str] = set()
        if not self._regions:
            return None, used

        def locate(array: np.ndarray) -> tuple[str, int] | None:
            where = self.locate(array)
            if where is not None:
                used.add(where[0])
            return where
        return locate, used

    def locate(self, array: np.ndarray) -> tuple[str, int] | None:
        """(region, offset) if `array` lies entirely inside a registered region and can be read
        there as it is; else None (it is sent as a frame)."""
        if not self._regions or array.dtype not in _SERVED or not array.flags.c_contiguous \
                or array.nbytes == 0:
            return None
        start = array.__array_interface__["data"][0]
        with self._lock:
            for region in self._regions.values():
                offset = start - region.address
                if 0 <= offset and offset + array.nbytes <= region.nbytes:
                    return region.name, offset
        return None


def shared_array(region: Region, shape, dtype, offset: int = 0) -> np.ndarray:
    """A writable array over a registered region's bytes, sent by reference by infer()."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if offset < 0 or offset % dtype.itemsize or offset + count * dtype.itemsize > region.nbytes:
        raise InvalidInput(f"region {region.name!r} ({region.nbytes} bytes) has no room for "
                           f"{tuple(shape)} {dtype} at offset {offset} (aligned to its items)")
    return np.frombuffer(region.shm.buf, dtype, count, offset).reshape(shape)


def register_header(request_id: int, region: Region | None, name: str) -> dict:
    """A REGISTER request's header (asks for a writable mapping for an output region)."""
    header = {"id": request_id, "region": name}
    if region is not None and region.writable:
        header["writable"] = True
    return header


def fill_targets(outputs: dict, targets: dict) -> dict:
    """A reply's outputs with each one the server wrote into a target region replaced by the
    caller's own array (the reply names it by reference: region and offset, no bytes)."""
    if not targets:
        return outputs
    from edgesched.serve.wire import RegionRef
    filled = dict(outputs)
    for name, value in outputs.items():
        if type(value) is RegionRef:
            target = targets.get(name)
            if target is None or target.shape != value.shape or target.dtype != value.dtype:
                raise InvalidInput(f"the server wrote output {name!r} to a region this request "
                                   "did not name for it")
            filled[name] = target
    return filled

