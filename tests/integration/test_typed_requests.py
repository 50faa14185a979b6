"""Typed INFER end to end: Timings from the server to both clients, and the server's counters
for requests the wire refuses (bad priority or deadline counted as before the typed request)."""
from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgesched import AsyncClient, InvalidInput, Timings  # noqa: E402
from edgesched.serve import wire  # noqa: E402
from tests.integration.conftest import CLIENT_TIMEOUT_S  # noqa: E402
from tests.models import example_input  # noqa: E402


def _sane(timings: Timings) -> None:
    assert isinstance(timings, Timings)
    assert all(type(v) is float for v in (timings.queue_ms, timings.device_ms, timings.total_ms))
    assert 0 <= timings.queue_ms <= timings.total_ms
    assert 0 < timings.device_ms <= timings.total_ms


def test_client_infer_returns_timings_when_asked(client):
    inputs = example_input("convnet", 1)
    outputs = client.infer("convnet", inputs)
    assert isinstance(outputs, dict) and set(outputs) == {"logits"}       # default unchanged
    outputs, timings = client.infer("convnet", inputs, timings=True)
    assert set(outputs) == {"logits"}
    _sane(timings)


def test_pending_timings_are_none_until_the_result(client):
    pending = client.submit("attention", example_input("attention", 0))
    assert pending.timings is None
    pending.result()
    _sane(pending.timings)


def test_pending_timings_stay_none_after_an_error(client):
    pending = client.submit("convnet", {"image": np.zeros((1, 3, 96, 95), np.float32)})
    with pytest.raises(InvalidInput):
        pending.result()
    assert pending.timings is None


def test_async_client_infer_returns_timings_when_asked(example_server):
    async def run():
        async with AsyncClient(example_server[1], timeout_s=CLIENT_TIMEOUT_S) as c:
            plain = await c.infer("convnet", example_input("convnet", 2))
            timed = await c.infer("convnet", example_input("convnet", 2), timings=True)
            return plain, timed

    plain, (outputs, timings) = asyncio.run(run())
    assert set(plain) == set(outputs) == {"logits"}
    np.testing.assert_array_equal(plain["logits"], outputs["logits"])
    _sane(timings)


# --- what the server counts for requests the wire refuses ----------------------------------

def _raw_infer(request_id: int, **fields) -> list[bytes]:
    image = np.zeros((1, 3, 96, 96), np.float32)
    header = {"v": 1, "id": request_id, "inputs": [
        {"name": "image", "dtype": "float32", "shape": list(image.shape)}], **fields}
    return [wire.INFER, msgpack.packb(header), image.tobytes()]


@pytest.mark.parametrize("fields, code, counted", [
    ({"model": "convnet", "priority": "urgent"}, "INVALID_INPUT", "invalid"),
    ({"model": "convnet", "deadline_ms": "soon"}, "INVALID_INPUT", "invalid"),
    ({"model": "resnet", "priority": "urgent"}, "UNKNOWN_MODEL", "unknown_model"),
    ({"model": "resnet", "deadline_ms": float("nan")}, "UNKNOWN_MODEL", "unknown_model"),
    ({"model": 7, "priority": "urgent"}, "INVALID_INPUT", "undecodable"),
    ({"priority": "urgent"}, "INVALID_INPUT", "undecodable"),
], ids=["priority", "deadline", "unknown-model-first", "unknown-model-nan", "int-model",
        "no-model"])
def test_refused_requests_are_counted_as_before(client, example_server, raw_sockets, fields,
                                                code, counted):
    def counters() -> dict:
        stats = client.stats()
        return {"invalid": stats["models"]["convnet"]["invalid"],
                "unknown_model": stats["unknown_model"], "undecodable": stats["undecodable"]}

    before = counters()
    sock = raw_sockets.open(example_server[1])
    sock.send_multipart(_raw_infer(21, **fields))
    reply = wire.decode_reply(raw_sockets.receive(sock))
    assert (reply.kind, reply.id, reply.header["code"]) == (wire.ERROR, 21, code)
    after = counters()
    assert {k: after[k] - before[k] for k in after} == \
        {k: int(k == counted) for k in after}

