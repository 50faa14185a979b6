"""Every bad input gets the right typed error (or ERROR reply), and the server carries on."""
from __future__ import annotations

import asyncio
from typing import Callable

import msgpack
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgesched import (  # noqa: E402
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    MessageTooLarge,
    Overloaded,
    ServerUnavailable,
    UnknownModel,
)
from edgesched.errors import RequestError, error_from_code  # noqa: E402
from edgesched.serve import wire  # noqa: E402
from tests.models import EXAMPLES, SLOW_INPUT, example_input, pair_input, slow_input  # noqa: E402

HANG_S = 20.0                # hang protection only


@pytest.fixture
def assert_still_serving(example_server, ort_run):
    """Checks that the shared server answers a valid request correctly."""
    def check() -> None:
        inputs = example_input("convnet", 11)
        with Client(example_server[1], timeout_s=HANG_S) as c:
            got = c.infer("convnet", inputs)["logits"]
        np.testing.assert_allclose(got, ort_run(EXAMPLES / "convnet.onnx", inputs)["logits"],
                                   rtol=1e-5, atol=1e-5)
    return check


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


# --- through the Client: typed exceptions --------------------------------------------------

def _image(shape=(1, 3, 96, 96), dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


# id -> (model, inputs, exception type, words the message must contain)
CLIENT_CASES = {
    "unknown model": ("resnet", {"image": _image()}, UnknownModel,
                      ["'resnet'", "convnet", "depthwise", "attention", "skip_sliced", "pair"]),
    "wrong input name": ("convnet", {"img": _image()}, InvalidInput, ["'image'", "'img'"]),
    "missing input": ("pair", {"a": pair_input(0)["a"]}, InvalidInput, ["missing ['b']"]),
    "extra input": ("pair", {**pair_input(0), "c": np.zeros((2, 4), np.float32)}, InvalidInput,
                    ["unexpected ['c']"]),
    "wrong dtype": ("convnet", {"image": _image(dtype=np.float64)}, InvalidInput,
                    ["float64", "float32"]),
    "int dtype": ("pair", {"a": np.zeros((2, 4), np.int64), "b": pair_input(0)["b"]},
                  InvalidInput, ["int64", "'a'"]),
    "wrong shape": ("convnet", {"image": _image((1, 3, 96, 97))}, InvalidInput,
                    ["(1, 3, 96, 97)", "[1, 3, 96, 96]"]),
    "wrong batch": ("convnet", {"image": _image((2, 3, 96, 96))}, InvalidInput,
                    ["(2, 3, 96, 96)"]),
    "wrong rank": ("convnet", {"image": _image((3, 96, 96))}, InvalidInput, ["(3, 96, 96)"]),
    "scalar": ("attention", {"tokens": np.float32(1.0)}, InvalidInput, ["'tokens'"]),
    "empty dimension": ("convnet", {"image": _image((1, 3, 0, 96))}, InvalidInput,
                        ["(1, 3, 0, 96)"]),
}


@pytest.mark.parametrize("model, inputs, error, words", CLIENT_CASES.values(),
                         ids=list(CLIENT_CASES))
def test_bad_request_raises_a_typed_error(client, assert_still_serving, model, inputs, error,
                                          words):
    with pytest.raises(error) as raised:
        client.infer(model, inputs)
    assert type(raised.value) is error
    message = _one_line(raised.value)
    for word in words:
        assert word in message
    assert_still_serving()
    assert client.infer("pair", pair_input(1))["out"].shape == (2, 4)   # this client too


@pytest.mark.parametrize("deadline_ms", [0, -5, -1e9])
def test_deadline_already_past_raises_deadline_exceeded(client, assert_still_serving,
                                                         deadline_ms):
    before = client.stats()["models"]["attention"]["expired"]
    with pytest.raises(DeadlineExceeded) as raised:
        client.infer("attention", example_input("attention", 0), deadline_ms=deadline_ms)
    assert "attention" in _one_line(raised.value)
    assert client.stats()["models"]["attention"]["expired"] == before + 1
    assert_still_serving()


def test_a_generous_deadline_is_met(client):
    outputs = client.infer("attention", example_input("attention", 0), deadline_ms=60_000)
    assert outputs["features"].shape == (1, 32, 64)


def test_bad_requests_are_counted_apart_from_service_outcomes(client):
    def counters() -> tuple:
        stats = client.stats()
        convnet = stats["models"]["convnet"]
        return (stats["unknown_model"], convnet["invalid"], convnet["completed"],
                convnet["failed"], convnet["rejected"])

    before = counters()
    with pytest.raises(UnknownModel):
        client.infer("nope", {"image": _image()})
    with pytest.raises(InvalidInput):
        client.infer("convnet", {"image": _image((1, 3, 96, 95))})
    unknown, invalid, completed, failed, rejected = counters()
    assert (unknown, invalid) == (before[0] + 1, before[1] + 1)
    assert (completed, failed, rejected) == before[2:]


def test_client_refuses_empty_inputs_before_sending(client):
    with pytest.raises(InvalidInput):
        client.infer("convnet", {})
    with pytest.raises(InvalidInput):
        client.infer("convnet", [("image", _image())])


# --- raw sockets: malformed messages ---------------------------------------------------------

def _spec(name: str, array: np.ndarray) -> dict:
    return {"name": name, "dtype": array.dtype.name, "shape": list(array.shape)}


def _header(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


IMAGE = np.zeros((1, 3, 96, 96), np.float32)
GOOD_SPEC = _spec("image", IMAGE)


def _infer(header: bytes, *tensors: bytes) -> list[bytes]:
    return [wire.INFER, header, *tensors]


# id -> (frames, code, id in the reply, words the message must contain)
RAW_CASES: dict[str, tuple[list[bytes], str, int | None, list[str]]] = {
    "header not msgpack": (_infer(b"\xc1\xc1 not msgpack", IMAGE.tobytes()), "INVALID_INPUT",
                           None, ["msgpack"]),
    "header truncated": (_infer(_header(id=3, model="convnet")[:-3]), "INVALID_INPUT", None,
                         ["msgpack"]),
    "header not a map": (_infer(msgpack.packb([1, "convnet"])), "INVALID_INPUT", None, ["map"]),
    "header wrong version": (_infer(msgpack.packb({"v": 2, "id": 3}), IMAGE.tobytes()),
                             "INVALID_INPUT", None, ["version"]),
    "header too large": (_infer(_header(id=3, model="convnet", pad="x" * 70_000)),
                         "INVALID_INPUT", None, ["header"]),
    "header missing model": (_infer(_header(id=3, inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                             "INVALID_INPUT", 3, ["'model'"]),
    "model not a string": (_infer(_header(id=3, model=7, inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                           "INVALID_INPUT", 3, ["'model'"]),
    "header missing id": (_infer(_header(model="convnet", inputs=[GOOD_SPEC]),
                                 IMAGE.tobytes()), "INVALID_INPUT", None, ["'id'"]),
    "id not an integer": (_infer(_header(id="3", model="convnet", inputs=[GOOD_SPEC]),
                                 IMAGE.tobytes()), "INVALID_INPUT", None, ["'id'"]),
    "id a bool": (_infer(_header(id=True, model="convnet", inputs=[GOOD_SPEC]),
                         IMAGE.tobytes()), "INVALID_INPUT", None, ["'id'"]),
    "unknown model": (_infer(_header(id=3, model="resnet", inputs=[GOOD_SPEC]),
                             IMAGE.tobytes()), "UNKNOWN_MODEL", 3, ["'resnet'", "convnet"]),
    "1 spec, 2 frames": (_infer(_header(id=3, model="convnet", inputs=[GOOD_SPEC]),
                                IMAGE.tobytes(), IMAGE.tobytes()), "INVALID_INPUT", 3,
                         ["1 tensors", "2 tensor frames"]),
    "2 specs, 1 frame": (_infer(_header(id=3, model="convnet",
                                        inputs=[GOOD_SPEC, {**GOOD_SPEC, "name": "x"}]),
                                IMAGE.tobytes()), "INVALID_INPUT", 3,
                         ["2 tensors", "1 tensor frames"]),
    "1 spec, no frame": (_infer(_header(id=3, model="convnet", inputs=[GOOD_SPEC])),
                         "INVALID_INPUT", 3, ["1 tensors", "0 tensor frames"]),
    "no inputs": (_infer(_header(id=3, model="convnet")), "INVALID_INPUT", 3,
                  ["missing ['image']"]),
    "byte length mismatch": (_infer(_header(id=3, model="convnet", inputs=[GOOD_SPEC]),
                                    IMAGE.tobytes()[:-4]), "INVALID_INPUT", 3,
                             [f"{IMAGE.nbytes - 4} bytes", f"({IMAGE.nbytes} bytes)"]),
    "inputs not a list": (_infer(_header(id=3, model="convnet", inputs=GOOD_SPEC),
                                 IMAGE.tobytes()), "INVALID_INPUT", 3, ["'inputs'"]),
    "spec not a map": (_infer(_header(id=3, model="convnet", inputs=["image"]),
                              IMAGE.tobytes()), "INVALID_INPUT", 3, ["spec 0"]),
    "dtype not servable": (_infer(_header(id=3, model="convnet",
                                          inputs=[{**GOOD_SPEC, "dtype": "object"}]),
                                  IMAGE.tobytes()), "INVALID_INPUT", 3, ["'object'"]),
    "negative dimension": (_infer(_header(id=3, model="convnet",
                                          inputs=[{**GOOD_SPEC, "shape": [1, 3, -96, -96]}]),
                                  IMAGE.tobytes()), "INVALID_INPUT", 3, ["shape"]),
    "repeated tensor name": (_infer(_header(id=3, model="convnet",
                                            inputs=[GOOD_SPEC, GOOD_SPEC]),
                                    IMAGE.tobytes(), IMAGE.tobytes()), "INVALID_INPUT", 3,
                             ["repeat"]),
    "too many tensors": (_infer(_header(id=3, model="convnet",
                                        inputs=[{"name": f"t{i}", "dtype": "uint8",
                                                 "shape": [1]} for i in range(65)]),
                                *[b"\0"] * 65), "INVALID_INPUT", 3, ["at most 64"]),
    "bad priority": (_infer(_header(id=3, model="convnet", priority="urgent",
                                    inputs=[GOOD_SPEC]), IMAGE.tobytes()), "INVALID_INPUT", 3,
                     ["'urgent'"]),
    "priority not a string": (_infer(_header(id=3, model="convnet", priority=1,
                                             inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                              "INVALID_INPUT", 3, ["priority"]),
    "deadline not a number": (_infer(_header(id=3, model="convnet", deadline_ms="soon",
                                             inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                              "INVALID_INPUT", 3, ["deadline_ms"]),
    "deadline not a number (nan)": (_infer(_header(id=3, model="convnet",
                                                   deadline_ms=float("nan"),
                                                   inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                                    "INVALID_INPUT", 3, ["deadline_ms"]),
    "deadline zero": (_infer(_header(id=3, model="convnet", deadline_ms=0, inputs=[GOOD_SPEC]),
                             IMAGE.tobytes()), "DEADLINE_EXCEEDED", 3, ["convnet"]),
    "deadline negative": (_infer(_header(id=3, model="convnet", deadline_ms=-1.5,
                                         inputs=[GOOD_SPEC]), IMAGE.tobytes()),
                          "DEADLINE_EXCEEDED", 3, ["convnet"]),
    "unknown message type": ([b"HELLO", _header(id=3)], "INVALID_INPUT", None, ["HELLO"]),
    "error as a request": ([wire.ERROR, _header(id=3)], "INVALID_INPUT", None, ["ERROR"]),
    "type frame only": ([wire.INFER], "INVALID_INPUT", None, ["2 frames", "got 1"]),
    "empty message": ([b""], "INVALID_INPUT", None, ["got 0"]),
    "empty frames": ([b"", b""], "INVALID_INPUT", None, ["got 1"]),
}


def _error_reply(frames: list[bytes]) -> dict:
    # An empty first frame looks like a REQ peer's delimiter to the server, which mirrors it.
    if frames and frames[0] == b"":
        frames = frames[1:]
    assert len(frames) == 2 and frames[0] == wire.ERROR, frames[:1]
    return msgpack.unpackb(frames[1], raw=False)


@pytest.mark.parametrize("frames, code, reply_id, words", RAW_CASES.values(),
                         ids=list(RAW_CASES))
def test_malformed_message_gets_an_error_reply(example_server, raw_sockets, assert_still_serving,
                                               ort_run, frames, code, reply_id, words):
    sock = raw_sockets.open(example_server[1])
    sock.send_multipart(frames)
    reply = _error_reply(raw_sockets.receive(sock))
    assert (reply["v"], reply["code"], reply["id"]) == (1, code, reply_id)
    assert isinstance(reply["message"], str)
    assert reply["message"] and "\n" not in reply["message"]
    for word in words:
        assert word in reply["message"]
    # The same connection still works, and so does everyone else's.
    inputs = example_input("convnet", 5)
    sock.send_multipart(wire.encode(wire.INFER, {"id": 99, "model": "convnet"}, inputs),
                        copy=False)
    good = wire.decode_reply(raw_sockets.receive(sock))
    assert (good.kind, good.id) == (wire.INFER, 99)
    np.testing.assert_allclose(good.tensors["logits"],
                               ort_run(EXAMPLES / "convnet.onnx", inputs)["logits"],
                               rtol=1e-5, atol=1e-5)
    assert_still_serving()


def test_client_raises_the_error_a_raw_reply_carries(example_server, raw_sockets):
    """error_from_code maps each code to its class: spot-check via a raw round trip."""
    sock = raw_sockets.open(example_server[1])
    sock.send_multipart(_infer(_header(id=3, model="nope")))
    reply = _error_reply(raw_sockets.receive(sock))
    error = error_from_code(reply["code"], reply["message"])
    assert type(error) is UnknownModel and isinstance(error, RequestError)


# --- limits: message size and queue depth ---------------------------------------------------

ATTENTION = {"name": "attention", "path": str(EXAMPLES / "attention.onnx"), "slo_ms": 250}


def test_message_over_the_size_limit_raises_message_too_large(start_server, ort_run):
    _, endpoint = start_server([ATTENTION], max_message_bytes=100_000)
    too_big = np.zeros((1, 32, 1024), np.float32)            # 131072 bytes
    with Client(endpoint, timeout_s=HANG_S) as c:
        with pytest.raises(MessageTooLarge) as raised:
            c.infer("attention", {"tokens": too_big})
        assert isinstance(raised.value, InvalidInput)
        assert "100000" in _one_line(raised.value)
        inputs = example_input("attention", 2)               # 8192 bytes: within the limit
        np.testing.assert_allclose(c.infer("attention", inputs)["features"],
                                   ort_run(EXAMPLES / "attention.onnx", inputs)["features"],
                                   rtol=1e-5, atol=1e-5)


def test_async_client_gets_message_too_large_too(start_server):
    _, endpoint = start_server([ATTENTION], max_message_bytes=100_000)

    async def send_too_big() -> None:
        # A healthy server answers at once; the timeout only bounds the test if it does not.
        async with AsyncClient(endpoint, timeout_s=2.0) as c:
            await c.infer("attention", {"tokens": np.zeros((1, 32, 1024), np.float32)})

    with pytest.raises(MessageTooLarge):
        asyncio.run(send_too_big())


def test_server_survives_a_message_far_over_the_size_limit(start_server):
    # Frames over libzmq's MAXMSGSIZE (set from the limit) are dropped with the connection
    # before the server sees them: a typed reply is not promised, a live server is.
    _, endpoint = start_server([ATTENTION], max_message_bytes=100_000)
    with Client(endpoint, timeout_s=1.0) as c:
        with pytest.raises((MessageTooLarge, ServerUnavailable)):
            c.infer("attention", {"tokens": np.zeros((1, 32, 16384), np.float32)})   # 2 MiB
    with Client(endpoint, timeout_s=HANG_S) as c:
        assert c.infer("attention", example_input("attention", 0))["features"].shape \
            == (1, 32, 64)


@pytest.fixture
def crowded_server(start_server, model_files) -> str:
    """A slow model behind one stream with room for 2 requests: a burst of 30 overflows it."""
    _, endpoint = start_server([{"name": "slow", "path": str(model_files.slow),
                                 "slo_ms": 10_000}], streams=1, queue_depth=2)
    return endpoint


def _burst_outcomes(collect: Callable[[], list[object]]) -> tuple[int, int]:
    outcomes = collect()
    ok = sum(1 for o in outcomes if isinstance(o, dict))
    overloaded = sum(1 for o in outcomes if isinstance(o, Overloaded))
    assert ok + overloaded == len(outcomes), [o for o in outcomes if not isinstance(o, dict)]
    return ok, overloaded


def test_full_queue_answers_overloaded_and_serves_the_rest(crowded_server):
    inputs = slow_input(0)
    with Client(crowded_server, timeout_s=HANG_S) as c:
        pending = [c.submit("slow", inputs) for _ in range(30)]

        def collect() -> list[object]:
            outcomes = []
            for p in pending:
                try:
                    outcomes.append(p.result())
                except Overloaded as e:
                    assert "slow" in _one_line(e)
                    outcomes.append(e)
            return outcomes

        ok, overloaded = _burst_outcomes(collect)
        assert ok >= 1 and overloaded >= 1
        stats = c.stats()["models"]["slow"]
        assert (stats["completed"], stats["rejected"]) == (ok, overloaded)
        assert stats["queue_depth"] == 0
        # Rejected requests count against the objective: attainment is at most ok / 30.
        assert stats["slo_attainment"] <= ok / 30
        # Once the burst is over the model serves again.
        assert c.infer("slow", inputs)["y"].shape == SLOW_INPUT[1]


def test_full_queue_answers_each_request_exactly_once(crowded_server, raw_sockets):
    sock = raw_sockets.open(crowded_server)
    x = slow_input(1)["x"]
    ids = list(range(1000, 1030))
    for request_id in ids:
        sock.send_multipart(wire.encode(wire.INFER, {"id": request_id, "model": "slow"},
                                        {"x": x}), copy=False)
    replies: dict[int, bytes] = {}
    while len(replies) < len(ids):
        msg = wire.decode_reply(raw_sockets.receive(sock))
        assert msg.id in ids and msg.id not in replies, f"unexpected or repeated reply {msg.id}"
        replies[msg.id] = msg.kind if msg.kind == wire.INFER else msg.header["code"]
    assert set(replies.values()) == {wire.INFER, "OVERLOADED"}
    # Nothing else is on its way: the next reply on this socket is the answer to this PING.
    sock.send_multipart([wire.PING, _header(id=2000)])
    assert wire.decode_reply(raw_sockets.receive(sock)).id == 2000



def test_client_side_bad_priority_is_invalid_input(start_server):
    _, endpoint = start_server([ATTENTION])
    with Client(endpoint, timeout_s=HANG_S) as c:
        with pytest.raises(InvalidInput) as raised:
            c.infer("attention", example_input("attention", 0), priority="urgent")
        assert "urgent" in _one_line(raised.value)
