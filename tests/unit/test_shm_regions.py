"""The server's region table (serve/shm.py) and the permission rule (access.region_refusal),
on files in a temporary directory standing in for /dev/shm."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from edgesched.errors import InvalidInput
from edgesched.serve import access, shm
from edgesched.serve.wire import RegionRef

PEER, OTHER = (b"peer-a",), (b"peer-b",)


def fake_stat(uid: int, gid: int, mode: int, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 4096, 0, 0, 0))


@pytest.mark.parametrize("info, gid, refused", [
    (fake_stat(1000, 1000, 0o600), None, None),                     # the server's own user
    (fake_stat(2000, 50, 0o640), 50, None),                         # socket_group, g+r
    (fake_stat(2000, 50, 0o600), 50, "belongs to uid 2000"),        # group may not read it
    (fake_stat(2000, 51, 0o640), 50, "belongs to uid 2000"),        # another group
    (fake_stat(2000, 50, 0o644), None, "belongs to uid 2000"),      # no socket_group
    (fake_stat(1000, 1000, 0o666), None, "world-writable"),
    (fake_stat(1000, 1000, 0o600, stat.S_IFDIR), None, "not a regular file"),
])
def test_region_refusal_applies_the_sockets_user_and_group_rules(info, gid, refused):
    got = access.region_refusal(info, 1000, gid)
    assert got is None if refused is None else refused in got


@pytest.fixture
def table(tmp_path):
    (tmp_path / "r1").write_bytes(np.arange(256, dtype=np.float32).tobytes())
    regions = shm.Regions(None, shm_dir=str(tmp_path))
    yield regions, tmp_path
    regions.close()


def ref(offset=0, n=4) -> RegionRef:
    return RegionRef("r1", offset, np.dtype(np.float32), (n,))


def test_a_region_is_mapped_once_for_every_owner_and_unmapped_after_the_last(table):
    regions, _ = table
    assert regions.register(PEER, "r1") == {"region": "r1", "bytes": 1024}
    regions.register(OTHER, "/r1")          # the same file, a leading slash
    assert len(regions._regions) == 1
    inputs, used = regions.resolve(PEER, {"x": ref(16)})
    np.testing.assert_array_equal(inputs["x"], [4, 5, 6, 7])
    assert not inputs["x"].flags.writeable
    regions.unregister(PEER, "r1")
    regions.unregister(OTHER, "/r1")
    assert regions.owners == 0 and regions._closing        # a request still reads it
    del inputs
    regions.release(used)
    assert not regions._closing


def test_a_region_shrunk_after_registration_is_out_of_bounds(table):
    regions, path = table
    regions.register(PEER, "r1")
    os.truncate(path / "r1", 8)
    with pytest.raises(InvalidInput, match="outside region"):
        regions.resolve(PEER, {"x": ref(0)})


def test_forget_releases_the_regions_of_peers_that_are_gone(table):
    regions, _ = table
    regions.register(PEER, "r1")
    regions.register(OTHER, "r1")
    assert regions.forget(lambda peer: peer == PEER) == 1
    assert regions.status(OTHER)["regions"] and not regions.status(PEER)["regions"]


def test_a_peer_may_hold_a_bounded_number_of_regions(table, monkeypatch):
    regions, path = table
    monkeypatch.setattr(shm, "MAX_REGIONS_PER_PEER", 2)
    for i in range(3):
        (path / f"q{i}").write_bytes(b"\0" * 64)
    regions.register(PEER, "q0")
    regions.register(PEER, "q1")
    with pytest.raises(InvalidInput, match="too many regions"):
        regions.register(PEER, "q2")


@pytest.mark.parametrize("accepted", [True, False])
def test_the_backend_hears_of_each_mapping_and_gives_it_up_before_the_unmap(tmp_path, accepted):
    (tmp_path / "r1").write_bytes(np.arange(256, dtype=np.float32).tobytes())
    told: list = []

    def map_host(address: int, nbytes: int) -> bool:
        told.append(("map", address, nbytes))
        return accepted

    def unmap_host(address: int) -> None:
        region = next(iter(regions._closing), None)
        told.append(("unmap", address, region is not None and not region.map.closed))

    regions = shm.Regions(None, shm_dir=str(tmp_path), map_host=map_host, unmap_host=unmap_host)
    regions.register(PEER, "r1")
    regions.register(OTHER, "r1")                  # mapped once: the backend hears once
    inputs, used = regions.resolve(PEER, {"x": ref(16)})
    address = told[0][1]
    assert told == [("map", address, 1024)]
    assert inputs["x"].ctypes.data == address + 16    # the address is the mapping's
    regions.unregister(PEER, "r1")
    regions.unregister(OTHER, "r1")
    assert len(told) == 1                          # a request still reads it: still mapped
    del inputs
    regions.release(used)
    # handed back while still mapped, and only if the backend took it
    assert told[1:] == ([("unmap", address, True)] if accepted else [])
    regions.close()
