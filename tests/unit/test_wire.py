"""Wire frames: round trips, zero-copy decoding, and one clear InvalidInput for every defect."""
from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from edgesched import errors
from edgesched.errors import InvalidInput, ServerError
from edgesched.serve import wire
from edgesched.serve.wire import (
    ERROR,
    INFER,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    MODELS,
    PING,
    PROTOCOL_VERSION,
    STATS,
    WIRE_DTYPES,
    Message,
    decode,
    decode_header,
    decode_reply,
    encode,
    encode_error,
)

ID = 7
GOOD_SPEC = {"name": "x", "dtype": "float32", "shape": [2, 3]}
GOOD_FRAME = bytes(24)


def transmit(frames: list) -> list[bytes]:
    """What the receiving side gets: every frame as its own bytes object."""
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


def packed(header: object) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def infer(header: dict | None = None, *tensor_frames, specs: object = ...) -> list:
    """An INFER message: a valid header with `header` merged in, then the given frames."""
    h = {"v": PROTOCOL_VERSION, "id": ID, "model": "m",
         "inputs": [GOOD_SPEC] if specs is ... else specs}
    h.update(header or {})
    return [INFER, packed(h), *tensor_frames]


def invalid(frames: list, match: str, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput, match=match) as caught:
        decode(frames, **kw)
    e = caught.value
    assert type(e) is InvalidInput
    assert str(e) and "\n" not in str(e)
    return e


# --- round trips --------------------------------------------------------------------------

ARRAYS = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "f16": np.linspace(-2, 2, 5).astype(np.float16),
    "f64": np.array([[np.pi, -0.0], [np.inf, 1e-300]]),
    "i8": np.array([-128, 0, 127], dtype=np.int8),
    "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "i16": np.array([-32768, 32767], dtype=np.int16),
    "u16": np.array([65535], dtype=np.uint16),
    "i32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "u32": np.array([2**32 - 1], dtype=np.uint32),
    "i64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "u64": np.array([2**64 - 1], dtype=np.uint64),
    "bool": np.array([[True, False, True]]),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "big": np.ones((1, 3, 32, 32), dtype=np.float32),
}


def test_every_wire_dtype_has_a_round_trip_case():
    assert {a.dtype.name for a in ARRAYS.values()} == WIRE_DTYPES


@pytest.mark.parametrize("over_the_wire", [False, True], ids=["in-process", "transmitted"])
def test_infer_request_round_trip(over_the_wire):
    frames = encode(INFER, {"id": 41, "model": "det", "deadline_ms": 33.5,
                            "priority": "realtime"}, ARRAYS)
    assert frames[0] == INFER and len(frames) == 2 + len(ARRAYS)
    if over_the_wire:
        frames = transmit(frames)
    msg = decode(frames)
    assert isinstance(msg, Message) and msg.kind == INFER and msg.id == 41
    assert msg.header["v"] == PROTOCOL_VERSION
    assert msg.header["model"] == "det" and msg.header["deadline_ms"] == 33.5
    assert msg.header["priority"] == "realtime"
    assert [s["name"] for s in msg.header["inputs"]] == list(ARRAYS)
    assert list(msg.tensors) == list(ARRAYS)
    for name, array in ARRAYS.items():
        got = msg.tensors[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_scalar_0d_tensor_round_trip_keeps_its_shape():
    scalars = {"temperature": np.array(0.5, dtype=np.float32),
               "count": np.array(3, dtype=np.int64)}
    frames = encode(INFER, {"id": 1, "model": "m"}, scalars)
    specs = msgpack.unpackb(frames[1])["inputs"]
    assert [s["shape"] for s in specs] == [[], []], specs
    msg = decode(transmit(frames))
    for name, array in scalars.items():
        assert msg.tensors[name].shape == ()
        assert msg.tensors[name] == array


def test_non_contiguous_inputs_are_sent_contiguous():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    arrays = {"strided": base[::2, 1::3], "transposed": base.T, "fortran": np.asfortranarray(base),
              "reversed": base[::-1]}
    frames = encode(INFER, {"id": 1, "model": "m"}, arrays)
    for frame in frames[2:]:
        assert frame.flags["C_CONTIGUOUS"]
    msg = decode(transmit(frames))
    for name, array in arrays.items():
        assert msg.tensors[name].shape == array.shape
        np.testing.assert_array_equal(msg.tensors[name], array)


def test_contiguous_inputs_are_sent_without_a_copy():
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    frames = encode(INFER, {"id": 1, "model": "m"}, {"x": array})
    assert np.shares_memory(frames[2], array)


def test_decoded_tensors_share_memory_with_their_frames():
    a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.uint8)
    frames = transmit(encode(INFER, {"id": 1, "model": "m"}, {"a": a, "b": b}))
    msg = decode(frames)
    for frame, name in zip(frames[2:], ("a", "b")):
        assert np.shares_memory(msg.tensors[name], np.frombuffer(frame, dtype=np.uint8))
    # A writable frame (a receive buffer) is visibly shared: writes show through.
    buffer = bytearray(frames[2])
    msg = decode([*frames[:2], buffer, frames[3]])
    buffer[:4] = np.float32(99.0).tobytes()
    assert msg.tensors["a"][0, 0] == 99.0


def test_decode_accepts_memoryview_frames():
    frames = [memoryview(f) for f in transmit(encode(PING, {"id": 3}))]
    msg = decode(frames)
    assert msg.kind == PING and msg.id == 3 and msg.tensors == {}


@pytest.mark.parametrize("kind", [MODELS, STATS, PING])
def test_requests_without_tensors(kind):
    frames = encode(kind, {"id": 9})
    assert len(frames) == 2
    msg = decode(transmit(frames))
    assert (msg.kind, msg.id, msg.tensors) == (kind, 9, {})


def test_infer_reply_round_trip():
    outputs = {"logits": np.arange(10, dtype=np.float32).reshape(1, 10),
               "mask": np.zeros((2, 2), dtype=bool)}
    timings = {"queue_ms": 1.5, "device_ms": 3.25, "total_ms": 5.0}
    frames = encode(INFER, {"id": 12, "timings": timings}, outputs, tensor_key="outputs")
    msg = decode_reply(transmit(frames))
    assert msg.kind == INFER and msg.id == 12
    assert msg.header["timings"] == timings
    assert "inputs" not in msg.header
    for name, array in outputs.items():
        np.testing.assert_array_equal(msg.tensors[name], array)
        assert msg.tensors[name].dtype == array.dtype


def test_reply_tensors_are_read_from_outputs_not_inputs():
    frames = transmit(encode(INFER, {"id": 12}, {"y": np.ones(2)}, tensor_key="outputs"))
    with pytest.raises(InvalidInput, match="header lists 0 tensors but 1 tensor frames"):
        decode(frames)    # the server-side reading looks for "inputs"


REQUEST_ERRORS = [errors.UnknownModel, errors.InvalidInput, errors.MessageTooLarge,
                  errors.DeadlineExceeded, errors.Overloaded, errors.ShuttingDown,
                  errors.ServerError, errors.ServerUnavailable]


@pytest.mark.parametrize("cls", REQUEST_ERRORS, ids=lambda c: c.__name__)
def test_error_reply_round_trip_and_error_from_code(cls):
    frames = encode_error(31, cls(f"model 'x': {cls.__name__} happened"))
    msg = decode_reply(transmit(frames))
    assert msg.kind == ERROR and msg.id == 31 and msg.tensors == {}
    assert msg.header["code"] == cls.code
    assert msg.header["message"] == f"model 'x': {cls.__name__} happened"
    e = errors.error_from_code(msg.header["code"], msg.header["message"])
    assert type(e) is cls
    assert str(e) == msg.header["message"]


def test_error_reply_for_a_request_whose_id_was_unreadable():
    msg = decode_reply(transmit(encode_error(0, InvalidInput("header is not valid msgpack"))))
    assert msg.kind == ERROR and msg.header["code"] == "INVALID_INPUT"


def test_error_codes_are_distinct():
    codes = [cls.code for cls in REQUEST_ERRORS]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("code", ["NO_SUCH_CODE", "", "REQUEST_ERROR", "CONFIG_ERROR"])
def test_unknown_error_codes_become_server_error(code):
    e = errors.error_from_code(code, "something odd")
    assert type(e) is ServerError and str(e) == "something odd"


def test_servers_do_not_accept_error_messages_as_requests():
    invalid(transmit(encode_error(1, ServerError("x"))), "unknown message type")


# --- malformed messages -------------------------------------------------------------------

@pytest.mark.parametrize("frames", [[], [INFER]], ids=["none", "one"])
def test_too_few_frames(frames):
    e = invalid(frames, "at least 2 frames")
    assert getattr(e, "request_id", None) is None


@pytest.mark.parametrize("kind", [b"", b"infer", b"NOPE", b"\xff" * 100, ERROR])
def test_unknown_message_type(kind):
    e = invalid([kind, packed({"v": 1, "id": 1})], "unknown message type")
    assert len(str(e)) < 100
    assert getattr(e, "request_id", None) is None


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x82\xa1v", packed({"v": 1}) + b"\x00",
                                    packed({1: 2, "v": 1, "id": 1})],
                         ids=["empty", "reserved-byte", "truncated", "trailing", "int-key"])
def test_header_not_msgpack(header):
    e = invalid([INFER, header], "not valid msgpack")
    assert getattr(e, "request_id", None) is None


@pytest.mark.parametrize("header", [[1, 2], "v", 1, None, b"bytes"])
def test_header_not_a_map(header):
    invalid([INFER, packed(header)], "must be a msgpack map")


@pytest.mark.parametrize("header", [{"id": 1}, {"v": 2, "id": 1}, {"v": 0, "id": 1},
                                    {"v": "1", "id": 1}, {"v": None, "id": 1}],
                         ids=["missing", "2", "0", "str", "null"])
def test_wrong_or_missing_protocol_version(header):
    e = invalid([INFER, packed(header)], "protocol version")
    assert getattr(e, "request_id", None) is None


@pytest.mark.parametrize("header", [{"v": 1}, {"v": 1, "id": True}, {"v": 1, "id": False},
                                    {"v": 1, "id": "7"}, {"v": 1, "id": 7.0},
                                    {"v": 1, "id": None}],
                         ids=["missing", "true", "false", "str", "float", "null"])
def test_missing_or_non_integer_id(header):
    e = invalid([INFER, packed(header)], "integer 'id'")
    assert getattr(e, "request_id", None) is None


def test_oversized_header():
    big = packed({"v": 1, "id": 1, "model": "m" * MAX_HEADER_BYTES})
    e = invalid([INFER, big], "exceeds")
    assert getattr(e, "request_id", None) is None
    invalid([INFER, b"\x00" * (MAX_HEADER_BYTES + 1)], "exceeds")
    # At the limit it is parsed (and fails later for its own reason, if any).
    at_limit = packed({"v": 1, "id": 1, "pad": ""})
    at_limit = packed({"v": 1, "id": 1, "pad": "p" * (MAX_HEADER_BYTES - len(at_limit) - 2)})
    assert len(at_limit) <= MAX_HEADER_BYTES
    assert decode([PING, at_limit]).id == 1


def test_decode_header_alone():
    assert decode_header(packed({"v": 1, "id": 5, "x": [1]})) == {"v": 1, "id": 5, "x": [1]}
    with pytest.raises(InvalidInput):
        decode_header(packed({"v": 1}))


# After the header decodes, every error carries the request id so the server can reply.

@pytest.mark.parametrize("specs", [{"x": GOOD_SPEC}, "x", 3, None],
                         ids=["map", "str", "int", "null"])
def test_tensor_specs_not_a_list(specs):
    e = invalid(infer(None, specs=specs), "must be a list")
    assert e.request_id == ID


def test_too_many_tensor_specs():
    specs = [{"name": f"t{i}", "dtype": "uint8", "shape": [0]} for i in range(MAX_TENSORS + 1)]
    e = invalid(infer(None, *[b""] * len(specs), specs=specs), "at most 64")
    assert e.request_id == ID
    ok = decode(infer(None, *[b""] * MAX_TENSORS, specs=specs[:MAX_TENSORS]))
    assert len(ok.tensors) == MAX_TENSORS


@pytest.mark.parametrize("spec", ["x", 1, None, ["x", "float32", [1]], {"dtype": "float32"},
                                  {"name": 1, "dtype": "float32", "shape": [6]},
                                  {"name": None, "dtype": "float32", "shape": [6]}],
                         ids=["str", "int", "null", "list", "no-name", "int-name", "null-name"])
def test_tensor_spec_not_a_map_with_a_name(spec):
    e = invalid(infer(None, GOOD_FRAME, specs=[spec]), "tensor spec 0 must be a map")
    assert e.request_id == ID


@pytest.mark.parametrize("dtype", ["object", "O", ">f4", ">i8", "=f4", "float", "complex64", "float128",
                                   "str", "U8", "V4", "datetime64", "", None, 4],
                         ids=repr)
def test_unknown_or_unsafe_dtype(dtype):
    spec = {**GOOD_SPEC, "dtype": dtype}
    e = invalid(infer(None, GOOD_FRAME, specs=[spec]), "dtype")
    assert e.request_id == ID
    assert "'x'" in str(e)


@pytest.mark.parametrize("dtype", [["float32"], {"kind": "f"}], ids=["list", "map"])
def test_unhashable_dtype_is_invalid_input(dtype):
    # msgpack decodes arrays and maps to list/dict: a client can send either as the dtype.
    spec = {**GOOD_SPEC, "dtype": dtype}
    e = invalid(infer(None, GOOD_FRAME, specs=[spec]), "dtype")
    assert e.request_id == ID


@pytest.mark.parametrize("shape", [[-1, 6], [2, True], [True], [1.0, 6], ["2", 3], [None, 6],
                                   [1] * 9, [2**31, 1], 6, "2,3", None, {"0": 2}],
                         ids=["negative", "bool", "bool-only", "float", "str-dim", "null-dim",
                              "9-dims", "huge", "int", "str", "null", "map"])
def test_bad_shape(shape):
    spec = {**GOOD_SPEC, "shape": shape}
    e = invalid(infer(None, GOOD_FRAME, specs=[spec]), "shape must be a list")
    assert e.request_id == ID


def test_eight_dims_are_fine():
    spec = {**GOOD_SPEC, "shape": [1, 1, 1, 2, 1, 3, 1, 1]}
    assert decode(infer(None, GOOD_FRAME, specs=[spec])).tensors["x"].shape == \
        (1, 1, 1, 2, 1, 3, 1, 1)


@pytest.mark.parametrize("nbytes", [0, 23, 25, 48])
def test_byte_length_mismatch(nbytes):
    e = invalid(infer(None, bytes(nbytes)), f"{nbytes} bytes do not match")
    assert e.request_id == ID
    assert "24 bytes" in str(e)


def test_byte_length_of_a_huge_shape_is_a_mismatch_not_an_allocation():
    spec = {**GOOD_SPEC, "shape": [2**31 - 1] * 8}
    e = invalid(infer(None, GOOD_FRAME, specs=[spec]), "do not match")
    assert len(str(e)) < 400


@pytest.mark.parametrize("n_frames, n_specs", [(0, 1), (2, 1), (1, 0), (3, 2)])
def test_frame_count_differs_from_spec_count(n_frames, n_specs):
    specs = [{**GOOD_SPEC, "name": f"t{i}"} for i in range(n_specs)]
    e = invalid(infer(None, *[GOOD_FRAME] * n_frames, specs=specs),
                f"header lists {n_specs} tensors but {n_frames} tensor frames")
    assert e.request_id == ID


def test_duplicate_tensor_names():
    e = invalid(infer(None, GOOD_FRAME, GOOD_FRAME, specs=[GOOD_SPEC, GOOD_SPEC]),
                "tensor names repeat")
    assert e.request_id == ID


def test_reply_decoding_validates_the_same_way():
    frames = [INFER, packed({"v": 1, "id": 4, "outputs": [GOOD_SPEC]}), bytes(5)]
    with pytest.raises(InvalidInput, match="do not match") as caught:
        decode_reply(frames)
    assert caught.value.request_id == 4


def test_wire_module_has_no_pickle():
    source = Path(wire.__file__).read_text()
    assert "pickle" not in source.replace("No pickle", "")
