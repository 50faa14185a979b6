"""The live fuzz's message generator (tests import it as `tests.fuzz_messages`): mutated
edgesched wire messages with the outcome each should get, the rule for which ones the server
can attribute to an id, and raw unix-socket payloads that are not even ZMTP.

Everything draws from a `random.Random` the caller seeds, so a failing run reproduces.
"""
from __future__ import annotations

import math
import random
import socket
import struct

import msgpack

from edgesched.errors import InvalidInput
from edgesched.serve import wire
from tests.models import EXAMPLES, example_input

MAX_BYTES = 1 << 20               # the fuzzed server's limits.max_message_bytes
HANG_S = 30.0                     # hang protection only
# name -> (model file or sliced directory, the shipped example whose interface it has)
MODELS = {"convnet": (EXAMPLES / "convnet.onnx", "convnet"),
          "depthwise": (EXAMPLES / "depthwise.onnx", "depthwise"),
          "attention": (EXAMPLES / "attention.onnx", "attention"),
          "sliced": (EXAMPLES / "convnet_sliced", "convnet")}    # 3 slices: staging, requeue
GONE = "gone"     # served only to clients that close before their replies: counted apart
INPUTS = {(m, s): example_input(MODELS[m][1] if m in MODELS else "depthwise", s)
          for m in [*MODELS, GONE] for s in range(2)}
OUTCOMES = ("completed", "failed", "expired", "rejected")
# SERVER_ERROR would mean an exception escaped a handler: never a fuzz outcome.
REPLY_CODES = {"INVALID_INPUT", "MESSAGE_TOO_LARGE", "UNKNOWN_MODEL", "DEADLINE_EXCEEDED",
               "OVERLOADED"}
BAD_REQUEST = {"INVALID_INPUT", "MESSAGE_TOO_LARGE", "UNKNOWN_MODEL"}
ANY = "any"       # expectation: any typed outcome (a flipped bit may or may not matter)
INVALID = {"INVALID_INPUT"}

# --- message generator -----------------------------------------------------------------------
WEIRD_HEADERS = [msgpack.packb(x) for x in (
    [1, "convnet"], 7, "INFER", b"\x00", None, 1.5, msgpack.ExtType(5, b"xx"),
    msgpack.Timestamp(1, 2), {1: 2}, {"v": 1, "id": msgpack.ExtType(1, b"")},
    {"v": 1, "id": 1.0}, {"v": 2, "id": 1}, {"id": 1}, {"v": "1", "id": 1}, {"v": 1, "id": None},
    {"v": 1, "id": [1]}, {"v": 1, "id": "1"}, {"v": 1, "id": True}, {b"v": 1, b"id": 1},
    {"v": 1, "id": 1, "pad": "x" * wire.MAX_HEADER_BYTES})] + [
    b"\x91" * 5000 + b"\xc0",                              # arrays nested 5000 deep
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",      # 4G-item array / map, no items
    msgpack.packb({"v": 1, "id": 1}) + b"\x00", b"", b"\xc1", b"\xff" * 16]
ODD_FIELDS = [    # (header field, odd value, expected outcome)
    ("model", 7, INVALID), ("model", None, INVALID), ("model", b"convnet", INVALID),
    ("model", ["convnet"], INVALID), ("model", "", {"UNKNOWN_MODEL"}),
    ("model", "x" * 3000, {"UNKNOWN_MODEL"}), ("model", "convnet\x00", {"UNKNOWN_MODEL"}),
    ("inputs", {}, INVALID), ("inputs", "image", INVALID), ("inputs", None, INVALID),
    ("inputs", [[1]], INVALID), ("deadline_ms", "soon", INVALID),
    ("deadline_ms", math.nan, INVALID), ("deadline_ms", True, INVALID),
    ("deadline_ms", -math.inf, {"DEADLINE_EXCEEDED"}), ("deadline_ms", 0, {"DEADLINE_EXCEEDED"}),
    ("deadline_ms", 1e-9, ANY), ("priority", "urgent", INVALID), ("priority", 1, INVALID),
    ("priority", ["realtime"], INVALID), ("priority", None, None), ("v", True, ANY),
    ("v", 1.0, None), ("id", "7", INVALID), ("id", 1.5, INVALID), ("id", None, INVALID)]
ODD_DTYPES = ["float64", "float16", "int32", "uint8", "bool", "object", ">f4", "float128",
              "complex64", "", 7, None, ["float32"]]
ODD_SHAPES = [[2**31 - 1] * 8, [2**30, 2**30], [2**31], [1] * 9, [2**62], [2**64 - 1], [-1],
              [1, 3, -96, -96], [1.5, 2], ["1"], None, 3, [True, 1], [0, 3, 96, 96]]
ODD_TYPES = [b"HELLO", b"infer", wire.ERROR, b"\x00" * 100, b"PING "]


def _with(frames: list[bytes], spec: dict | None = None, **fields) -> list[bytes]:
    """`frames` with header fields (or the first tensor spec's fields) replaced."""
    header = {**msgpack.unpackb(frames[1]), **fields}
    if spec is not None:
        header["inputs"] = [{**header["inputs"][0], **spec}]
    return [frames[0], msgpack.packb(header), *frames[2:]]


def _put(frames: list[bytes], i: int, frame: bytes) -> list[bytes]:
    return frames[:i] + [frame] + frames[i + 1:]


def _flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    out = bytearray(data)
    for i in (rng.randrange(len(out) * 8) for _ in range(bits)):
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def mutate(rng: random.Random, rid: int) -> tuple[list[bytes], object, tuple | None]:
    """(frames, expected, reference): expected is None (success, or OVERLOADED for INFER),
    a set of error codes, or ANY; reference is the (model, seed) a valid INFER's output has."""
    ref = rng.choice(list(MODELS)), rng.randrange(2)
    header = {"id": rid, "model": ref[0], "trace": 1}           # unknown keys are ignored
    if rng.random() < 0.3:
        header["priority"] = rng.choice(["realtime", "best_effort"])
    if rng.random() < 0.2:
        header["deadline_ms"] = rng.choice([60_000, 1e300, math.inf, 2**63])
    frames = [f if isinstance(f, bytes) else f.tobytes()
              for f in wire.encode(wire.INFER, header, INPUTS[ref])]
    shape = list(next(iter(INPUTS[ref].values())).shape)

    def odd_field():
        field, value, expected = rng.choice(ODD_FIELDS)
        return _with(frames, **{field: value}), expected

    def truncated():
        i = rng.choice([1, 2])
        return _put(frames, i, frames[i][:rng.randrange(len(frames[i]))]), INVALID

    def empty_frame():    # at 0 it reads as a REQ delimiter: the message stays valid
        i = rng.randrange(len(frames) + 1)
        return frames[:i] + [b""] + frames[i:], ANY if i == 0 else INVALID

    cases = [  # (weight, make)
        (3, lambda: (frames, None)),
        (1, lambda: ([rng.choice([wire.PING, wire.STATS, wire.MODELS]),
                      wire.pack_header({"id": rid})], None)),
        (1, lambda: ([rng.randbytes(rng.randrange(300)) for _ in range(rng.randrange(1, 8))],
                     INVALID)),
        (1, lambda: (_put(frames, 1, _flip(frames[1], rng, rng.randrange(1, 4))), ANY)),
        (1, lambda: (_put(frames, 2, _flip(frames[2], rng, rng.randrange(1, 8))), None)),
        (1, truncated),
        (1, lambda: (_with(frames, {"dtype": rng.choice(ODD_DTYPES)}), INVALID)),
        (1, lambda: (_with(frames, {"shape": rng.choice(    # the right bytes, the wrong shape
            [shape[::-1], [math.prod(shape)], shape + [1], [1] + shape])}), INVALID)),
        (1, lambda: (_with(frames, {"shape": rng.choice(ODD_SHAPES)}), INVALID)),
        (1, odd_field),
        (1, lambda: (_with(frames, id=rng.choice([2**64 - 1 - rid, -2**63 + rid, -rid])), None)),
        (1, lambda: (_put(frames, 1, rng.choice(WEIRD_HEADERS)), INVALID)),
        (1, lambda: (_put(frames, 0, rng.choice(ODD_TYPES + [rng.randbytes(8)])), INVALID)),
        (1, lambda: (frames + [rng.randbytes(rng.randrange(64))
                               for _ in range(rng.randrange(1, 4))], INVALID)),
        (1, empty_frame),
        (1, lambda: (frames[:2] + [bytes(MAX_BYTES // 3 + 1)] * 3, {"MESSAGE_TOO_LARGE"})),
        (1, lambda: (_with(frames, {"name": rng.choice(["img", "", 5])}), INVALID)),
        (1, lambda: (_with(frames, inputs=[{"name": f"t{i}", "dtype": "uint8", "shape": [1]}
                                           for i in range(65)])[:2] + [b"\0"] * 65, INVALID)),
        (1, lambda: (_with(frames, inputs=msgpack.unpackb(frames[1])["inputs"] * 2)
                     + frames[2:], INVALID)),                      # one tensor name twice
    ]
    pick = rng.choices(range(len(cases)), [w for w, _ in cases])[0]
    out, expected = cases[pick][1]()
    return out, expected, ref if pick == 0 else None


def attributed(body: list[bytes]) -> tuple[object, str | None]:
    """(the id the server can read from `body`, or None; the model its header names)."""
    if len(body) < 2 or sum(map(len, body)) <= MAX_BYTES and body[0] not in wire.REQUEST_TYPES:
        return None, None
    try:
        header = wire.decode_header(body[1])
    except InvalidInput:
        return None, None
    model = header.get("model")
    return header["id"], model if isinstance(model, str) else None


# --- raw unix-socket connections: not ZMTP, or ZMTP that goes wrong -----------------------

def _greeting(mechanism: bytes = b"NULL", major: int = 3) -> bytes:
    return b"\xff" + bytes(8) + b"\x7f" + bytes([major, 0]) + mechanism.ljust(20, b"\0") \
        + bytes(32)


READY = b"\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"    # a DEALER's handshake


def raw_payload(rng: random.Random) -> bytes:
    return rng.choice([
        lambda: rng.randbytes(rng.randrange(1, 4096)),
        lambda: _greeting() + rng.randbytes(rng.randrange(1, 512)),
        lambda: _greeting(b"CURVE") + READY,
        lambda: _greeting(major=1) + rng.randbytes(64),
        lambda: _greeting() + READY + b"\x02" + struct.pack(">Q", 2**62),     # a 4 EiB frame
        lambda: _greeting() + READY + b"\x02" + struct.pack(">Q", 3 * MAX_BYTES) + bytes(4096),
        lambda: _greeting() + READY + b"\x01\x05INFER\x00\x40abc",            # cut short
        lambda: b"",                                                          # connect, close
    ])()


def raw_connect(path: str, payload: bytes) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(HANG_S)
    conn.connect(path)
    try:
        conn.sendall(payload)
    except OSError:               # the server may hang up mid-write: that is its right
        pass
    return conn
