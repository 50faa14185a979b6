"""Shared-memory tensors, the server's side: regions clients register, mapped once, read in place.

A client creates (or attaches) a POSIX shared-memory region (/dev/shm/NAME, as
multiprocessing.shared_memory makes them) and sends REGISTER {"region": NAME}; its INFER
inputs may then name the region and an offset instead of carrying a frame. The server opens
the file read-only (O_NOFOLLOW), checks it against the socket's rules (access.region_refusal),
maps it once (PROT_READ) for every peer that registers it, and checks bounds on every request.

Ownership contract: a request owns the bytes it names from sending until its reply arrives;
the client must not change or unregister them before (the server reads them in place while
the request runs; a reply, result or error, ends the request's claim).

Lifetime: a mapping ends when its last owner is gone: UNREGISTER, or the peer's connection
going away. ZeroMQ names no peer on disconnect (ROUTER_NOTIFY is a draft API), so on each
EVENT_DISCONNECTED of the ROUTER's monitor, and every PROBE_EVERY_S, the serve thread probes each
owning peer with an id-0 PING reply (clients drop ids they never sent): with ROUTER_MANDATORY,
EHOSTUNREACH means the peer is gone, and its regions are released. A mapping some request is
still reading is unmapped when that request's reply is sent. The file descriptor stays open
while the region is registered (fstat on each request catches a client that shrank the file:
reading past its end would be SIGBUS); unmapping closes it.

On a GPU backend the mapping is also handed to the backend (`map_host` / `unmap_host`, where
the backend has them): TensorRT registers it with CUDA, so an input in it is bound in place
(integrated GPU) or copied once straight from it (discrete). It is handed back before unmapping.
"""
from __future__ import annotations

import math
import mmap
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgesched.errors import InvalidInput
from edgesched.serve import access, wire
from edgesched.serve.wire import RegionRef

SHM_DIR = "/dev/shm"
MAX_REGIONS_PER_PEER = 64
MAX_REGIONS = 1024
PROBE_EVERY_S = 2.0             # owners probed this often even without a disconnect event
_NAME = re.compile(r"/?[A-Za-z0-9_.\-]{1,200}")


@dataclass
class _Region:
    name: str
    fd: int
    map: mmap.mmap
    nbytes: int
    owners: set = field(default_factory=set)     # peer keys (the routing envelope)
    in_flight: int = 0                           # requests reading (or writing) it now
    address: int = 0                             # of its first byte in this process
    writable: bool = False                       # mapped PROT_WRITE too: outputs may go there


class Regions:
    def __init__(self, socket_gid: int | None, shm_dir: str = SHM_DIR, *,
                 map_host: Callable[[int, int], bool] | None = None,
                 unmap_host: Callable[[int], None] | None = None):
        """map_host(address, nbytes) / unmap_host(address): the backend's, told of each
        mapping (serve thread; a failure there leaves the region on the copy path)."""
        self._gid, self._dir = socket_gid, shm_dir
        self._map_host, self._unmap_host = map_host, unmap_host
        self._uid = os.geteuid()
        self._regions: dict[str, _Region] = {}
        self._closing: list[_Region] = []        # unowned, but a request still reads it
        self._lock = threading.Lock()

    # --- messages (serve thread) ---------------------------------------------------------
    def register(self, peer: tuple, name: object, writable: object = False) -> dict:
        name = _checked_name(name)
        if not isinstance(writable, bool):
            raise InvalidInput(f"REGISTER 'writable' must be true or false, got {writable!r}")
        with self._lock:
            region = self._regions.get(name)
            if region is not None and writable and not region.writable:
                raise InvalidInput(f"region {name!r} is already registered read-only; register "
                                   "it writable before any client registers it read-only")
            if region is not None:
                if peer not in region.owners and self._owned_by(peer) >= MAX_REGIONS_PER_PEER:
                    raise InvalidInput(f"a client may register at most {MAX_REGIONS_PER_PEER} "
                                       "regions")
                region.owners.add(peer)
                return {"region": name, "bytes": region.nbytes}
            if self._owned_by(peer) >= MAX_REGIONS_PER_PEER or len(self._regions) >= MAX_REGIONS:
                raise InvalidInput(f"too many regions registered (at most "
                                   f"{MAX_REGIONS_PER_PEER} a client, {MAX_REGIONS} in all)")
            region = self._open(name, writable)
            region.owners.add(peer)
            self._regions[name] = region
            return {"region": name, "bytes": region.nbytes}

    def unregister(self, peer: tuple, name: object) -> dict:
        name = _checked_name(name)
        with self._lock:
            region = self._regions.get(name)
            if region is None or peer not in region.owners:
                raise InvalidInput(f"region {name!r} is not registered by this client")
            self._disown(region, peer)
        return {"region": name}

    def status(self, peer: tuple) -> dict:
        with self._lock:
            return {"regions": [{"region": r.name, "bytes": r.nbytes, "in_flight": r.in_flight}
                                for r in self._regions.values() if peer in r.owners]}

    def resolve(self, peer: tuple, inputs: dict) -> tuple[dict, list]:
        """Inputs with every RegionRef replaced by a read-only view of its region, and the
        regions claimed (hand them to `release` when the request's reply is sent)."""
        refs = {name: ref for name, ref in inputs.items() if type(ref) is RegionRef}
        if not refs:
            return inputs, []
        views, used = self._claim(peer, refs, "input")
        return {**inputs, **views}, used

    def resolve_targets(self, peer: tuple, targets: dict) -> tuple[dict, list]:
        """Output targets (name -> RegionRef) as views of their regions, which must have been
        registered writable; claimed as `resolve` claims inputs."""
        return self._claim(peer, targets, "output target") if targets else ({}, [])

    def _claim(self, peer: tuple, refs: dict, what: str) -> tuple[dict, list]:
        views, used = {}, []
        with self._lock:
            try:
                for name, ref in refs.items():
                    region = self._readable(peer, name, ref, what)
                    if what != "input" and not region.writable:
                        raise InvalidInput(f"{what} {name!r}: region {ref.region!r} was "
                                           "registered read-only (register it writable)")
                    views[name] = np.frombuffer(region.map, ref.dtype, math.prod(ref.shape),
                                                ref.offset).reshape(ref.shape)
                    region.in_flight += 1
                    used.append(region)
            except BaseException:
                self._release(used)
                raise
        return views, used

    def release(self, used: list) -> None:
        """A request's reply is sent: its claims end (the serve thread)."""
        if used:
            with self._lock:
                self._release(used)

    def forget(self, gone) -> int:
        """Release the regions of every owner `gone(peer)` says has disconnected; how many."""
        with self._lock:
            owners = {p for r in self._regions.values() for p in r.owners}
        lost = [p for p in owners if gone(p)]
        with self._lock:
            for region in list(self._regions.values()):
                for peer in lost:
                    if peer in region.owners:
                        self._disown(region, peer)
            self._retry_closing()
        return len(lost)

    @property
    def owners(self) -> int:
        with self._lock:
            return len({p for r in self._regions.values() for p in r.owners})

    def close(self) -> None:
        with self._lock:
            for region in list(self._regions.values()):
                region.owners.clear()
                region.in_flight = 0
                if not self._unmap(region):      # a view is alive: retried, fd kept open
                    self._closing.append(region)
            self._regions.clear()
            self._retry_closing()

    # --- internals (lock held) -----------------------------------------------------------
    def _owned_by(self, peer: tuple) -> int:
        return sum(peer in r.owners for r in self._regions.values())

    def _open(self, name: str, writable: bool = False) -> _Region:
        path = os.path.join(self._dir, name.lstrip("/"))
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW |
                         os.O_CLOEXEC)
        except OSError as e:
            raise InvalidInput(f"region {name!r}: cannot open {path}: "
                               f"{e.strerror or e}") from None
        try:
            info = os.fstat(fd)
            refusal = access.region_refusal(info, self._uid, self._gid, writable)
            if refusal is not None:
                raise InvalidInput(f"region {name!r}: {path} {refusal}")
            if info.st_size == 0:
                raise InvalidInput(f"region {name!r}: {path} is empty")
            mapped = mmap.mmap(fd, info.st_size, mmap.MAP_SHARED, mmap.PROT_READ |
                               (mmap.PROT_WRITE if writable else 0))
        except BaseException:
            os.close(fd)
            raise
        region = _Region(name, fd, mapped, info.st_size, writable=writable)
        if self._map_host is not None:
            region.address = np.frombuffer(mapped, np.uint8, 1).ctypes.data
            if not self._map_host(region.address, region.nbytes):
                region.address = 0               # not the backend's: inputs are copied
        return region

    def _readable(self, peer: tuple, name: str, ref: RegionRef, what: str = "input") -> _Region:
        region = self._regions.get(ref.region)
        if region is None or peer not in region.owners:
            raise InvalidInput(f"{what} {name!r}: region {ref.region!r} is not registered by "
                               "this client")
        end = ref.offset + ref.nbytes
        if end > region.nbytes or os.fstat(region.fd).st_size < end:
            raise InvalidInput(f"{what} {name!r}: bytes {ref.offset}..{end} lie outside region "
                               f"{ref.region!r} ({region.nbytes} bytes)")
        if ref.offset % ref.dtype.itemsize:
            raise InvalidInput(f"{what} {name!r}: offset {ref.offset} is not a multiple of the "
                               f"item size {ref.dtype.itemsize}")
        return region

    def _disown(self, region: _Region, peer: tuple) -> None:
        region.owners.discard(peer)
        if not region.owners:
            del self._regions[region.name]
            self._closing.append(region)
            self._retry_closing()

    def _release(self, used: list) -> None:
        for region in used:
            region.in_flight -= 1
        self._retry_closing()

    def _retry_closing(self) -> None:
        self._closing = [r for r in self._closing if not (r.in_flight <= 0 and self._unmap(r))]

    def _unmap(self, region: _Region) -> bool:
        """Unmap and close; False while a view of it is still alive (retried later). No
        request reads it (in_flight is 0), so the backend gives it up first."""
        if region.address and self._unmap_host is not None:
            self._unmap_host(region.address)
            region.address = 0
        try:
            region.map.close()
        except BufferError:
            return False
        if region.fd >= 0:
            os.close(region.fd)
            region.fd = -1
        return True


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lstrip("/") in (".", ".."):
        raise InvalidInput(f"region name {name!r} must be 1-200 characters of A-Z a-z 0-9 . _ - "
                           "(a POSIX shared-memory name, optionally with a leading /)")
    return name.lstrip("/")                 # one table entry (one mapping) per file


def answer(regions: Regions, kind: bytes, header: dict, peer: tuple) -> dict:
    """The reply fields of a REGISTER, UNREGISTER or REGION_STATUS request from `peer`."""
    if kind == wire.REGISTER:
        return regions.register(peer, header.get("region"), header.get("writable", False))
    if kind == wire.UNREGISTER:
        return regions.unregister(peer, header.get("region"))
    return regions.status(peer)


def probe_gone(router, probe: list, peer: tuple) -> bool:
    """Has `peer` disconnected? A ROUTER_MANDATORY send says EHOSTUNREACH if so. `probe`: a
    reply no client waits for (id 0), which clients drop."""
    import zmq
    try:
        router.send_multipart([*peer, *probe], zmq.NOBLOCK)
    except zmq.ZMQError as e:
        return e.errno == zmq.EHOSTUNREACH
    return False


class Sweeper:
    """The serve thread's watch over region owners: the ROUTER's disconnect events (register
    `monitor` in the poller) and a sweep every PROBE_EVERY_S."""

    def __init__(self, regions: Regions, router):
        import zmq
        self.regions, self._router = regions, router
        self.monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._probe = [wire.PING, wire.pack_header({"id": 0})]
        self._next_s = 0.0

    def __call__(self, events: dict, now_s: float) -> None:
        if self.monitor not in events and now_s < self._next_s:
            return
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
        if self.regions.owners:
            self.regions.forget(lambda peer: probe_gone(self._router, self._probe, peer))
        self._next_s = now_s + PROBE_EVERY_S

    def close(self) -> None:
        self._router.disable_monitor()
        self.monitor.close(linger=0)


# --- output targets: outputs written into a client's writable region -------------------------

def target_problem(outputs, targets: dict) -> str | None:
    """Why `targets` (output name -> writable view) cannot take the model's `outputs` (its
    TensorSpecs), or None. Shapes are checked when the outputs exist (`write_targets`)."""
    specs = {spec.name: spec for spec in outputs}
    for name, view in targets.items():
        spec = specs.get(name)
        if spec is None:
            return f"output target {name!r}: the model has no such output ({', '.join(specs)})"
        if view.dtype != spec.np_dtype:
            return f"output target {name!r}: dtype {view.dtype} != the output's {spec.dtype}"
        if view.ndim != len(spec.shape) or any(
                want is not None and got != want for got, want in zip(view.shape, spec.shape)):
            return f"output target {name!r}: shape {list(view.shape)} cannot hold the output"
    return None


def write_targets(outputs: dict, targets: dict) -> dict:
    """Copy each targeted output into its view (one copy, into the client's memory, instead of
    a frame through the socket); the refs written, for the reply. InvalidInput when an output
    came out in a shape its target cannot hold (a dynamic dimension)."""
    written = {}
    for name, (view, ref) in targets.items():
        out = outputs[name]
        if out.shape != view.shape:
            raise InvalidInput(f"output target {name!r}: the output is {list(out.shape)}, the "
                               f"target holds {list(view.shape)}")
        np.copyto(view, out)
        written[name] = ref
    return written
