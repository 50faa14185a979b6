"""Wire decoding never fails any other way than one clear InvalidInput: random bytes and
structured garbage (headers that pass the first checks, so the deep ones are exercised)."""
from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from edgesched import dtypes
from edgesched.errors import InvalidInput
from edgesched.serve.wire import (
    ERROR,
    INFER,
    MODELS,
    PING,
    PROTOCOL_VERSION,
    STATS,
    WIRE_DTYPES,
    InferRequest,
    Message,
    decode,
    decode_reply,
    decode_request,
)
from edgesched.types import Priority, Timings


def packed(header: object) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def decodes_or_invalid(frames: list, reply: bool = False) -> None:
    try:
        msg = (decode_reply if reply else decode)(frames)
    except InvalidInput as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(msg, Message)
    # An ERROR reply may carry id None (the server could not read the request it answers).
    if not (reply and msg.kind == ERROR and msg.id is None):
        assert isinstance(msg.id, int) and not isinstance(msg.id, bool)
    assert all(isinstance(t, np.ndarray) for t in msg.tensors.values())


@PROPERTY
@given(st.lists(st.binary(max_size=48), max_size=6), st.booleans())
@example([ERROR, packed({"v": 1, "id": None, "code": "INVALID_INPUT", "message": "x"})], True)
def test_random_bytes_decode_or_raise_invalid_input(frames, reply):
    decodes_or_invalid(frames, reply)


def mostly(value: object, junk: st.SearchStrategy) -> st.SearchStrategy:
    """`value` three times in four, else whatever `junk` draws."""
    return st.one_of(st.just(value), st.just(value), st.just(value), junk)


KINDS = st.sampled_from([INFER, MODELS, STATS, PING, ERROR, INFER, INFER, b"INF"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=4)
DTYPES = st.one_of(st.sampled_from(sorted(WIRE_DTYPES)), st.sampled_from(sorted(WIRE_DTYPES)),
                   st.sampled_from(["object", "float128", "<f4", "|u1", ">f4", ""]), VALUES)
SHAPES = st.one_of(st.lists(st.integers(-1, 4), max_size=4),
                   st.lists(st.integers(0, 3), max_size=3), VALUES)


def frame_size(spec: object) -> int:
    """The byte length a spec asks for, when it is small and well formed; else 0."""
    if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) \
            or spec["dtype"] not in dtypes.WIRE_NAMES or not isinstance(spec.get("shape"), list) \
            or not all(type(d) is int and 0 <= d <= 64 for d in spec["shape"]):
        return 0
    return int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize


@st.composite
def structured_messages(draw) -> list:
    """Frames that get past the first checks often, so the deep ones are exercised."""
    specs = draw(st.lists(st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]), "dtype": DTYPES,
                               "shape": SHAPES}),
        st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]), "dtype": DTYPES,
                               "shape": SHAPES}),
        VALUES), max_size=3))
    header = {"v": draw(mostly(PROTOCOL_VERSION, VALUES)),
              "id": draw(mostly(draw(st.integers(0, 2**32)), VALUES)),
              "inputs": draw(mostly(specs, VALUES)),
              "outputs": draw(mostly(specs, VALUES))}
    keep = st.sampled_from([True, True, True, True, True, True, True, False])
    header = {k: v for k, v in header.items() if draw(keep)}
    frames = []
    for spec in specs:
        size = frame_size(spec)
        frames.append(bytes(draw(st.sampled_from([size, size, size + 1, 0]))))
    frames += draw(st.lists(st.binary(max_size=8), max_size=1))
    return [draw(KINDS), packed(header), *frames]


# Each example draws many values, so fewer suffice; no shrink phase, which can take seconds
# on these nested headers (the examples are small enough to read unshrunk).
@settings(PROPERTY, max_examples=150,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
@given(structured_messages(), st.booleans())
def test_structured_garbage_decodes_or_raises_invalid_input(frames, reply):
    decodes_or_invalid(frames, reply)


def server_decodes_or_invalid(frames: list) -> None:
    """The server's reading: an INFER is an InferRequest with checked fields, or InvalidInput."""
    try:
        msg = decode_request(frames)
    except InvalidInput as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(msg.id, int) and not isinstance(msg.id, bool)
    if isinstance(msg, InferRequest):
        assert isinstance(msg.model, str)
        assert msg.priority is None or isinstance(msg.priority, Priority)
        assert msg.deadline_ms is None or type(msg.deadline_ms) in (int, float) \
            and msg.deadline_ms == msg.deadline_ms
        assert all(isinstance(t, np.ndarray) for t in msg.inputs.values())
    else:
        assert isinstance(msg, Message) and msg.kind != INFER


@st.composite
def infer_messages(draw) -> list:
    """structured_messages with an INFER's own fields (and a reply's timings) drawn too."""
    kind, header, *frames = draw(structured_messages())
    header = msgpack.unpackb(header, raw=False, strict_map_key=False)
    if isinstance(header, dict):
        fields = {"model": mostly("m", VALUES),
                  "priority": st.one_of(st.sampled_from([p.value for p in Priority]), VALUES),
                  "deadline_ms": st.one_of(st.floats(), VALUES),
                  "timings": st.one_of(st.fixed_dictionaries(
                      {k: st.floats() for k in ("queue_ms", "device_ms", "total_ms")}), VALUES)}
        for key, values in fields.items():
            if draw(st.booleans()):
                header[key] = draw(values)
    return [kind, packed(header), *frames]


@settings(PROPERTY, max_examples=150,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
@given(infer_messages())
def test_infer_requests_and_replies_decode_or_raise_invalid_input(frames):
    server_decodes_or_invalid(frames)
    decodes_or_invalid(frames, reply=True)
    try:
        timings = decode_reply(frames).timings
    except InvalidInput:
        return
    assert timings is None or isinstance(timings, Timings)
