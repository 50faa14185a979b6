"""INFER on the wire: the typed request (built by the client, decoded by the server, checked
by the same code), the typed timings of a reply, and a model's own input check."""
from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest

from edgesched import Timings
from edgesched.errors import InvalidInput
from edgesched.serve import wire
from edgesched.serve.wire import (
    ERROR,
    INFER,
    PING,
    PROTOCOL_VERSION,
    InferRequest,
    Message,
    decode,
    decode_reply,
    decode_request,
    encode,
    encode_error,
    encode_infer,
    encode_result,
    infer_request,
)
from edgesched.types import ModelInfo, Priority, TensorSpec

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def transmit(frames: list) -> list[bytes]:
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


def header_of(frames: list) -> dict:
    return msgpack.unpackb(frames[1], raw=False)


def raw_infer(**fields) -> list[bytes]:
    """An INFER request with one good tensor and the given header fields."""
    header = {"v": PROTOCOL_VERSION, "id": 5,
              "inputs": [{"name": "x", "dtype": "float32", "shape": [2, 3]}], **fields}
    return [INFER, msgpack.packb(header, use_bin_type=True), X.tobytes()]


# --- the client builds a request --------------------------------------------------------------

def test_infer_request_normalizes_the_callers_values():
    request = infer_request(3, "det", {"x": [[1, 2]]}, deadline_ms=np.int64(40),
                            priority="realtime")
    assert (request.id, request.model, request.deadline_ms, request.priority) == \
        (3, "det", 40.0, Priority.REALTIME)
    assert type(request.deadline_ms) is float
    assert isinstance(request.inputs["x"], np.ndarray) and request.inputs["x"].shape == (1, 2)
    assert infer_request(4, "det", {"x": X}).deadline_ms is None


def test_infer_request_is_frozen():
    request = infer_request(3, "det", {"x": X})
    with pytest.raises(AttributeError):
        request.model = "other"


@pytest.mark.parametrize("kwargs, words", [
    ({"model": 7}, ["string 'model'"]),
    ({"model": None}, ["string 'model'"]),
    ({"priority": "urgent"}, ["priority 'urgent'", "realtime or best_effort"]),
    ({"priority": 1}, ["priority 1"]),
    ({"deadline_ms": math.nan}, ["deadline_ms", "nan"]),
    ({"deadline_ms": "soon"}, ["deadline_ms", "'soon'"]),
    ({"inputs": {}}, ["non-empty mapping"]),
    ({"inputs": [("x", X)]}, ["non-empty mapping"]),
], ids=["int-model", "no-model", "bad-priority", "int-priority", "nan-deadline",
        "str-deadline", "no-inputs", "list-inputs"])
def test_infer_request_refuses_what_the_server_would(kwargs, words):
    args = {"model": "det", "inputs": {"x": X}, **kwargs}
    with pytest.raises(InvalidInput) as raised:
        infer_request(1, args.pop("model"), args.pop("inputs"), **args)
    assert type(raised.value) is InvalidInput and "\n" not in str(raised.value)
    for word in words:
        assert word in str(raised.value)


def test_a_request_keeps_infinite_and_huge_deadlines():
    # inf: effectively no deadline (accepted today by the server, so kept)
    assert infer_request(1, "m", {"x": X}, deadline_ms=math.inf).deadline_ms == math.inf
    assert decode_request(raw_infer(model="m", deadline_ms=2**63)).deadline_ms == 2**63


# --- one encoding, one decoding ---------------------------------------------------------------

@pytest.mark.parametrize("over_the_wire", [False, True], ids=["in-process", "transmitted"])
def test_infer_request_round_trip(over_the_wire):
    sent = infer_request(41, "det", {"x": X, "flag": np.array(True)}, 33.5, Priority.BEST_EFFORT)
    frames = encode_infer(sent)
    assert header_of(frames) == {"v": PROTOCOL_VERSION, "id": 41, "model": "det",
                                 "deadline_ms": 33.5, "priority": "best_effort",
                                 "inputs": [{"name": "x", "dtype": "<f4", "shape": [2, 3]},
                                            {"name": "flag", "dtype": "|b1", "shape": []}]}
    got = decode_request(transmit(frames) if over_the_wire else frames)
    assert isinstance(got, InferRequest)
    assert (got.id, got.model, got.deadline_ms, got.priority) == (41, "det", 33.5,
                                                                   Priority.BEST_EFFORT)
    assert list(got.inputs) == ["x", "flag"]
    np.testing.assert_array_equal(got.inputs["x"], X)
    assert got.inputs["flag"].shape == () and got.inputs["flag"]


def test_omitted_fields_are_not_sent_and_decode_as_none():
    frames = encode_infer(infer_request(2, "det", {"x": X}))
    assert set(header_of(frames)) == {"v", "id", "model", "inputs"}
    got = decode_request(transmit(frames))
    assert (got.deadline_ms, got.priority) == (None, None)


def test_decoded_inputs_share_memory_with_their_frames():
    frames = transmit(encode_infer(infer_request(2, "det", {"x": X})))
    got = decode_request(frames)
    assert np.shares_memory(got.inputs["x"], np.frombuffer(frames[2], dtype=np.uint8))


def test_other_requests_decode_as_messages():
    msg = decode_request(transmit(encode(PING, {"id": 9})))
    assert isinstance(msg, Message) and (msg.kind, msg.id) == (PING, 9)


def test_the_generic_decode_does_not_read_infer_fields():
    msg = decode(raw_infer())           # no model: a frame-level read still succeeds
    assert isinstance(msg, Message) and msg.kind == INFER and msg.tensors["x"].shape == (2, 3)


# --- the server's reading: errors carry the id, and the model where it matters -----------------

@pytest.mark.parametrize("fields, words, model", [
    ({}, ["string 'model'"], None),
    ({"model": 7}, ["string 'model'"], None),
    ({"model": "m", "priority": "urgent"}, ["'urgent'"], "m"),
    ({"model": "m", "priority": ["realtime"]}, ["priority"], "m"),
    ({"model": "m", "deadline_ms": "soon"}, ["deadline_ms"], "m"),
    ({"model": "m", "deadline_ms": math.nan}, ["deadline_ms"], "m"),
    ({"model": 7, "priority": "urgent"}, ["string 'model'"], None),     # the model comes first
], ids=["no-model", "int-model", "bad-priority", "list-priority", "str-deadline",
        "nan-deadline", "int-model-and-bad-priority"])
def test_bad_infer_fields(fields, words, model):
    with pytest.raises(InvalidInput) as raised:
        decode_request(raw_infer(**fields))
    e = raised.value
    assert type(e) is InvalidInput and e.request_id == 5
    assert getattr(e, "model", None) == model
    for word in words:
        assert word in str(e)


def test_tensor_defects_come_before_field_defects_and_name_no_model():
    frames = raw_infer(model="m", priority="urgent")
    with pytest.raises(InvalidInput, match="do not match") as raised:
        decode_request(frames[:2] + [frames[2][:-4]])
    assert raised.value.request_id == 5 and getattr(raised.value, "model", None) is None


# --- replies: typed timings -------------------------------------------------------------------

def test_result_round_trip_carries_typed_timings():
    timings = Timings(queue_ms=1.5, device_ms=3.25, total_ms=5.0)
    frames = encode_result(12, {"y": np.ones((1, 4), np.float32)}, timings)
    assert header_of(frames)["timings"] == {"queue_ms": 1.5, "device_ms": 3.25, "total_ms": 5.0}
    msg = decode_reply(transmit(frames))
    assert (msg.kind, msg.id, msg.timings) == (INFER, 12, timings)
    assert msg.tensors["y"].shape == (1, 4)


def test_the_wire_knows_every_timings_field():
    assert wire._TIMINGS == tuple(f.name for f in dataclasses.fields(Timings))


def test_integer_timings_decode_as_floats():
    frames = encode(INFER, {"id": 1, "timings": {"queue_ms": 0, "device_ms": 2, "total_ms": 3}},
                    {"y": np.ones(1)}, tensor_key="outputs")
    timings = decode_reply(transmit(frames)).timings
    assert timings == Timings(0.0, 2.0, 3.0) and type(timings.device_ms) is float


def test_replies_without_timings_have_none():
    assert decode_reply(transmit(encode(INFER, {"id": 1}, {"y": np.ones(1)},
                                        tensor_key="outputs"))).timings is None
    assert decode_reply(transmit(encode(PING, {"id": 1}))).timings is None
    assert decode_reply(transmit(encode_error(1, InvalidInput("no")))).timings is None


@pytest.mark.parametrize("timings", [{"queue_ms": 1.0, "device_ms": 2.0}, [1.0, 2.0, 3.0],
                                     {"queue_ms": 1.0, "device_ms": True, "total_ms": 3.0},
                                     {"queue_ms": "1", "device_ms": 2.0, "total_ms": 3.0}],
                         ids=["missing", "list", "bool", "str"])
def test_malformed_timings_are_invalid_input(timings):
    frames = encode(INFER, {"id": 8, "timings": timings}, {"y": np.ones(1)},
                    tensor_key="outputs")
    with pytest.raises(InvalidInput, match="timings") as raised:
        decode_reply(transmit(frames))
    assert raised.value.request_id == 8


def test_only_an_error_reply_may_carry_a_null_id():
    error = [ERROR, msgpack.packb({"v": 1, "id": None, "code": "INVALID_INPUT",
                                   "message": "header is not valid msgpack"})]
    assert decode_reply(error).id is None
    for kind in (INFER, PING):
        with pytest.raises(InvalidInput, match="integer 'id'"):
            decode_reply([kind, msgpack.packb({"v": 1, "id": None})])


# --- a model's own check: names, then each spec -----------------------------------------------

PAIR = ModelInfo("pair", (TensorSpec("a", "float32", (None, 4)), TensorSpec("b", "int64", (2,))),
                 (TensorSpec("out", "float32", (None, 4)),), 1, 10.0, Priority.BEST_EFFORT, 1)
A, B = np.zeros((3, 4), np.float32), np.zeros(2, np.int64)


@pytest.mark.parametrize("tensors, message", [
    ({"a": A}, "model 'pair' takes inputs ['a', 'b']; missing ['b']"),
    ({"a": A, "b": B, "c": B}, "model 'pair' takes inputs ['a', 'b']; unexpected ['c']"),
    ({"x": A, "b": B}, "model 'pair' takes inputs ['a', 'b']; missing ['a']; unexpected ['x']"),
    ({"a": A.astype(np.float64), "b": B},
     "model 'pair': input 'a': dtype float64 != expected float32"),
    ({"a": A, "b": np.zeros(3, np.int64)},
     "model 'pair': input 'b': shape (3,) != expected [2]"),
])
def test_model_check_inputs_says_what_does_not_fit(tensors, message):
    assert PAIR.check_inputs(tensors) == message


def test_model_check_inputs_accepts_a_fit_in_any_order():
    assert PAIR.check_inputs({"b": B, "a": np.zeros((1, 4), np.float32)}) is None
    assert PAIR == ModelInfo(*[getattr(PAIR, f) for f in ("name", "inputs", "outputs",
                             "num_slices", "slo_ms", "priority", "instances")])
