"""Shared-memory tensors on a real server: by reference equals by copy, bounds and names are
checked on every request, regions the server must not read are refused, and neither 1,000
register/unregister cycles nor a client that vanishes leave a mapping or descriptor behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edgesched import InvalidInput
from edgesched.serve import wire
from tests.integration.conftest import CLIENT_TIMEOUT_S, REPO_ROOT
from tests.models import example_input

pytest.importorskip("onnxruntime")
SHAPE = (1, 3, 96, 96)


def mappings(name: str) -> int:
    return sum(name in line for line in Path("/proc/self/maps").read_text().splitlines())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_array_in_a_registered_region_is_sent_by_reference(client, example_server, region):
    server = example_server[0]
    reg = client.register(region)
    image = client.shared_array(reg, SHAPE, np.float32, offset=4096)
    image[:] = example_input("convnet", 2)["image"]
    before = server.intake.snapshot()["peak_bytes"]
    by_ref = client.infer("convnet", {"image": image})["logits"]
    np.testing.assert_array_equal(by_ref, client.infer("convnet", {"image": image.copy()})
                                  ["logits"])
    frames = wire.encode_infer(wire.infer_request(1, "convnet", {"image": image}),
                               client._regions.locate)
    assert len(frames) == 2                                   # header only: no tensor frame
    spec, = msgpack.unpackb(frames[1])["inputs"]
    assert spec["region"] == region.name and spec["offset"] == 4096
    assert server.intake.snapshot()["peak_bytes"] <= max(before, image.nbytes + 4096)
    assert client.regions() == [{"region": region.name, "bytes": region.size, "in_flight": 0}]
    client.unregister(region)
    assert client.regions() == []
    del image


def raw_infer(sock, rid: int, spec: dict) -> dict:
    header = {"v": wire.PROTOCOL_VERSION, "id": rid, "model": "convnet", "inputs": [spec]}
    sock.send_multipart([wire.INFER, msgpack.packb(header)])
    return reply(sock)


def raw_call(sock, kind: bytes, rid: int, **fields) -> dict:
    sock.send_multipart([kind, msgpack.packb({"v": wire.PROTOCOL_VERSION, "id": rid,
                                              **fields})])
    return reply(sock)


def reply(sock) -> dict:
    """The next reply, skipping the server's id-0 PING probes of region owners."""
    while True:
        assert sock.poll(int(CLIENT_TIMEOUT_S * 1e3))
        kind, header = sock.recv_multipart()[:2]
        got = {"kind": kind, **msgpack.unpackb(header)}
        if got["id"] != 0:
            return got


@pytest.mark.parametrize("spec, match", [
    ({"offset": (1 << 20) - 4}, "outside region"),
    ({"offset": 2}, "not a multiple"),
    ({"offset": -1}, "integer 'offset'"),
    ({"region": "psm_not_registered"}, "not registered"),
    ({"region": 7}, "string 'region'"),
])
def test_bad_region_inputs_get_one_line_invalid_input(example_server, raw_sockets, region,
                                                      spec, match):
    sock = raw_sockets.open(example_server[1])
    assert raw_call(sock, wire.REGISTER, 1, region=region.name)["bytes"] == region.size
    base = {"name": "image", "dtype": "<f4", "shape": list(SHAPE), "region": region.name,
            "offset": 0}
    assert raw_infer(sock, 2, base)["kind"] == wire.INFER            # in bounds: served
    got = raw_infer(sock, 3, {**base, **spec})
    assert got["kind"] == wire.ERROR and got["code"] == "INVALID_INPUT", got
    assert match in got["message"] and "\n" not in got["message"] and got["id"] == 3


@pytest.mark.parametrize("name, match", [
    ("../etc/passwd", "POSIX shared-memory name"), ("", "POSIX shared-memory name"),
    ("..", "POSIX shared-memory name"), ("psm_does_not_exist_here", "cannot open"),
    (None, "POSIX shared-memory name")])
def test_bad_region_names_are_refused(example_server, raw_sockets, name, match):
    got = raw_call(raw_sockets.open(example_server[1]), wire.REGISTER, 5, region=name)
    assert got["code"] == "INVALID_INPUT" and match in got["message"], got


def test_a_world_writable_region_is_refused(client, region):
    os.chmod(f"/dev/shm/{region.name}", 0o666)
    with pytest.raises(InvalidInput, match="world-writable"):
        client.register(region)
    assert client.regions() == []


def test_another_peers_region_cannot_be_read_or_unregistered(example_server, raw_sockets,
                                                             region):
    owner, other = raw_sockets.open(example_server[1]), raw_sockets.open(example_server[1])
    raw_call(owner, wire.REGISTER, 1, region=region.name)
    spec = {"name": "image", "dtype": "<f4", "shape": list(SHAPE), "region": region.name,
            "offset": 0}
    assert "not registered by this client" in raw_infer(other, 2, spec)["message"]
    assert "not registered" in raw_call(other, wire.UNREGISTER, 3, region=region.name)["message"]
    assert raw_call(owner, wire.UNREGISTER, 4, region=region.name)["kind"] == wire.UNREGISTER


def test_a_thousand_register_cycles_leave_no_mapping_or_descriptor(client, example_server,
                                                                   region):
    client.register(region)
    client.unregister(region)
    fds, maps = open_fds(), mappings(region.name)           # the client's own mapping: 1
    for _ in range(1000):
        client.register(region)
        client.unregister(region)
    assert (open_fds(), mappings(region.name)) == (fds, maps) and maps == 1
    assert example_server[0].regions.owners == 0


def test_a_vanished_clients_regions_are_unmapped(example_server):
    server, endpoint = example_server
    script = textwrap.dedent(f"""
        import os, sys
        from multiprocessing import shared_memory
        from edgesched import Client
        shm = shared_memory.SharedMemory(create=True, size=65536)
        from multiprocessing import resource_tracker   # the test unlinks it, not the tracker
        resource_tracker.unregister(shm._name, "shared_memory")
        client = Client({endpoint!r}, timeout_s=20)
        client.register(shm)
        print(shm.name, flush=True)
        sys.stdin.readline()
        os._exit(0)                 # no unregister, no close: the process is simply gone
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        name = proc.stdout.readline().strip()
        assert name and mappings(name) == 1 and server.regions.owners >= 1
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=CLIENT_TIMEOUT_S)
        give_up = time.monotonic() + CLIENT_TIMEOUT_S
        while mappings(name) and time.monotonic() < give_up:
            time.sleep(0.02)
        assert mappings(name) == 0 and server.regions.owners == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        try:
            shared_memory.SharedMemory(name=name).unlink()
        except (FileNotFoundError, NameError):
            pass


def test_async_client_sends_region_arrays_by_reference(client, example_server, region):
    import asyncio

    from edgesched import AsyncClient

    async def run():
        async with AsyncClient(example_server[1], timeout_s=CLIENT_TIMEOUT_S) as aclient:
            reg = await aclient.register(region)
            image = aclient.shared_array(reg, SHAPE, np.float32)
            image[:] = example_input("convnet", 4)["image"]
            got = (await aclient.infer("convnet", {"image": image}))["logits"]
            assert (await aclient.regions())[0]["region"] == region.name
            await aclient.unregister(region)
            assert await aclient.regions() == []
            expected = client.infer("convnet", {"image": image.copy()})["logits"]
            del image
            return got, expected
    got, expected = asyncio.run(run())
    np.testing.assert_array_equal(got, expected)
