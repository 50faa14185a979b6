"""Outputs written into a client's writable shared-memory region: the reply carries no bytes."""
from __future__ import annotations

import asyncio
import os

import msgpack
import numpy as np
import pytest

from edgesched import InvalidInput
from edgesched.serve import wire
from tests.integration.conftest import CLIENT_TIMEOUT_S
from tests.integration.test_shm import SHAPE, raw_call
from tests.models import example_input

pytest.importorskip("onnxruntime")


def _logits(client) -> tuple[tuple, np.dtype]:
    (spec,) = next(m for m in client.models() if m["name"] == "convnet")["outputs"]
    return tuple(d or 1 for d in spec["shape"]), np.dtype(spec["dtype"])


def test_an_output_target_is_written_in_place_and_returned_as_the_callers_array(client,
                                                                                region):
    reg = client.register(region, writable=True)
    image = client.shared_array(reg, SHAPE, np.float32)
    image[:] = example_input("convnet", 3)["image"]
    shape, dtype = _logits(client)
    out = client.shared_array(reg, shape, dtype, offset=1 << 19)
    out[:] = np.nan
    got = client.infer("convnet", {"image": image}, outputs={"logits": out})["logits"]
    assert got is out                                       # the caller's own array
    np.testing.assert_array_equal(out, client.infer("convnet", {"image": image.copy()})
                                  ["logits"])               # the same values as by copy
    client.unregister(region)
    del image, out, got


def test_the_reply_names_the_target_and_carries_no_frame(example_server, raw_sockets, region):
    sock = raw_sockets.open(example_server[1])
    assert raw_call(sock, wire.REGISTER, 1, region=region.name, writable=True)["bytes"]
    image = np.frombuffer(region.buf, np.float32, int(np.prod(SHAPE))).reshape(SHAPE)
    image[:] = example_input("convnet", 1)["image"]
    header = {"v": wire.PROTOCOL_VERSION, "id": 2, "model": "convnet",
              "inputs": [{"name": "image", "dtype": "<f4", "shape": list(SHAPE),
                          "region": region.name, "offset": 0}],
              "targets": [{"name": "logits", "dtype": "<f4", "shape": [1, 10],
                           "region": region.name, "offset": 1 << 19}]}
    sock.send_multipart([wire.INFER, msgpack.packb(header)])
    assert sock.poll(int(CLIENT_TIMEOUT_S * 1e3))
    frames = sock.recv_multipart()
    while msgpack.unpackb(frames[1])["id"] == 0:          # the server's owner probes
        frames = sock.recv_multipart()
    assert frames[0] == wire.INFER and len(frames) == 2    # header only
    (spec,) = msgpack.unpackb(frames[1])["outputs"]
    assert spec["region"] == region.name and spec["offset"] == 1 << 19
    written = np.frombuffer(region.buf, np.float32, 10, 1 << 19)
    assert np.isfinite(written).all() and written.any()
    del image, written


@pytest.mark.parametrize("target, match", [
    ({"name": "nope"}, "no such output"),
    ({"dtype": "<f8"}, "dtype float64"),
    ({"shape": [1, 11]}, "cannot hold"),
    ({"offset": (1 << 20) - 8}, "outside region"),
])
def test_bad_output_targets_get_one_line_invalid_input(example_server, raw_sockets, region,
                                                       target, match):
    sock = raw_sockets.open(example_server[1])
    raw_call(sock, wire.REGISTER, 1, region=region.name, writable=True)
    spec = {"name": "logits", "dtype": "<f4", "shape": [1, 10], "region": region.name,
            "offset": 4096, **target}
    got = raw_call(sock, wire.INFER, 2, model="convnet",
                   inputs=[{"name": "image", "dtype": "<f4", "shape": list(SHAPE),
                            "region": region.name, "offset": 0}], targets=[spec])
    assert got["code"] == "INVALID_INPUT" and match in got["message"], got
    assert "\n" not in got["message"]
    assert raw_call(sock, wire.REGION_STATUS, 3)["regions"][0]["in_flight"] == 0   # released


def test_a_read_only_region_cannot_take_outputs(client, region):
    reg = client.register(region)                          # not writable
    shape, dtype = _logits(client)
    out = client.shared_array(reg, shape, dtype, offset=4096)
    image = example_input("convnet", 2)["image"]
    with pytest.raises(InvalidInput, match="registered read-only"):
        client.infer("convnet", {"image": image}, outputs={"logits": out})
    with pytest.raises(InvalidInput, match="does not lie"):   # not in any region: the client
        client.infer("convnet", {"image": image}, outputs={"logits": np.zeros(shape, dtype)})
    np.testing.assert_array_equal(client.infer("convnet", {"image": image})["logits"].shape,
                                  shape)                     # the connection still serves
    del out


def test_a_region_the_server_may_not_write_is_refused_writable(client, region):
    os.chmod(f"/dev/shm/{region.name}", 0o440)
    with pytest.raises(InvalidInput, match="not writable for the server|cannot open"):
        client.register(region, writable=True)
    assert client.regions() == []


def test_async_client_writes_outputs_into_a_region(client, example_server, region):
    from edgesched import AsyncClient

    async def run():
        async with AsyncClient(example_server[1], timeout_s=CLIENT_TIMEOUT_S) as aclient:
            reg = await aclient.register(region, writable=True)
            image = aclient.shared_array(reg, SHAPE, np.float32)
            image[:] = example_input("convnet", 5)["image"]
            out = aclient.shared_array(reg, (1, 10), np.float32, offset=1 << 19)
            got = (await aclient.infer("convnet", {"image": image},
                                       outputs={"logits": out}))["logits"]
            assert got is out
            result = out.copy(), image.copy()
            await aclient.unregister(region)
            del image, out, got
            return result
    written, image = asyncio.run(run())
    np.testing.assert_array_equal(written, client.infer("convnet", {"image": image})["logits"])
