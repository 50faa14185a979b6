"""Wire format: frame 0 = message type, frame 1 = msgpack header, then one raw frame per tensor.

Request  [TYPE, {"v", "id", ...}, *tensors]      TYPE in INFER | MODELS | STATS | PING
Reply    [TYPE, {"v", "id", ...}, *tensors]      same TYPE on success
Error    [ERROR, {"v", "id", "code", "message"}]
INFER request header: {"model", "deadline_ms"?, "priority"?, "inputs": [{"name","dtype","shape"}]}
INFER reply header:   {"outputs": [{"name","dtype","shape"}], "timings": {queue_ms, device_ms, total_ms}}
Tensors are C-contiguous raw bytes, decoded without a copy (np.frombuffer). No pickle, ever.
This module knows nothing of sockets: frames are bytes-like objects (bytes, memoryview).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import msgpack
import numpy as np

from edgesched.errors import InvalidInput

PROTOCOL_VERSION = 1
INFER, MODELS, STATS, PING, ERROR = b"INFER", b"MODELS", b"STATS", b"PING", b"ERROR"
REQUEST_TYPES = (INFER, MODELS, STATS, PING)
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
# Plain numeric element types only: no object, string or void dtypes can arrive over the wire.
WIRE_DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "uint16",
                         "int32", "uint32", "int64", "uint64", "bool"})
# numpy computes dtype.name in Python (~5 us a call): look names and item sizes up instead.
_NAME_OF = {np.dtype(n): n for n in WIRE_DTYPES}
_ITEMSIZE = {n: np.dtype(n).itemsize for n in WIRE_DTYPES}


@dataclass(frozen=True)
class Message:
    kind: bytes
    header: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def id(self):
        return self.header.get("id")


def pack_header(header: dict) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, **header}, use_bin_type=True)


def tensor_frames(arrays: Sequence[tuple[str, np.ndarray]]) -> tuple[list[dict], list[np.ndarray]]:
    """Specs and contiguous arrays ready to send as frames (copy only if not contiguous)."""
    specs, frames = [], []
    for name, array in arrays:
        array = np.asarray(array, order="C")      # ascontiguousarray would make 0-d arrays 1-d
        specs.append({"name": name, "dtype": _NAME_OF.get(array.dtype) or array.dtype.name,
                      "shape": list(array.shape)})
        frames.append(array)
    return specs, frames


def encode(kind: bytes, header: dict, tensors: dict[str, np.ndarray] | None = None,
           tensor_key: str = "inputs") -> list:
    """Frames for one message; tensor frames are the arrays themselves (zero-copy send)."""
    if not tensors:
        return [kind, pack_header(header)]
    specs, frames = tensor_frames(list(tensors.items()))
    return [kind, pack_header({**header, tensor_key: specs}), *frames]


def encode_error(request_id, error) -> list:
    return [ERROR, pack_header({"id": request_id, "code": error.code, "message": str(error)})]


def decode(frames: Sequence, tensor_key: str = "inputs",
           kinds: Sequence[bytes] = REQUEST_TYPES) -> Message:
    """Parse one message; any defect raises InvalidInput with a one-line reason."""
    if len(frames) < 2:
        raise InvalidInput(f"a message needs at least 2 frames (type, header), got {len(frames)}")
    kind = bytes(frames[0])
    if kind not in kinds:
        raise InvalidInput(f"unknown message type {kind[:16]!r}")
    header = decode_header(frames[1], reply=ERROR in kinds)
    try:
        return _decode_body(kind, header, frames, tensor_key)
    except InvalidInput as e:
        e.request_id = header["id"]       # lets the server address its error reply
        raise


def _decode_body(kind: bytes, header: dict, frames: Sequence, tensor_key: str) -> Message:
    specs = header.get(tensor_key, [])
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise InvalidInput(f"header field {tensor_key!r} must be a list of at most "
                           f"{MAX_TENSORS} tensor specs")
    if len(frames) - 2 != len(specs):
        raise InvalidInput(f"header lists {len(specs)} tensors but {len(frames) - 2} tensor "
                           "frames follow")
    tensors = dict(_tensor(spec, frame, i) for i, (spec, frame) in
                   enumerate(zip(specs, frames[2:])))
    if len(tensors) != len(specs):
        raise InvalidInput("tensor names repeat: " + ", ".join(s["name"] for s in specs))
    return Message(kind, header, tensors)


def decode_header(frame, reply: bool = False) -> dict:
    """A request header must carry an integer id; an error reply may carry None (the server
    could not read the request it answers)."""
    if len(frame) > MAX_HEADER_BYTES:
        raise InvalidInput(f"header of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types for garbage
        raise InvalidInput("header is not valid msgpack") from None
    if not isinstance(header, dict):
        raise InvalidInput("header must be a msgpack map")
    if header.get("v") != PROTOCOL_VERSION:
        raise InvalidInput(f"protocol version {header.get('v')!r} is not supported "
                           f"(this server speaks {PROTOCOL_VERSION})")
    rid = header.get("id")
    if not (isinstance(rid, int) and not isinstance(rid, bool) or reply and rid is None
            and "id" in header):
        raise InvalidInput("header lacks an integer 'id'")
    return header


def _tensor(spec: object, frame, i: int) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput(f"tensor spec {i} must be a map with a string 'name'")
    name, dtype, shape = spec["name"], spec.get("dtype"), spec.get("shape")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise InvalidInput(f"tensor {name!r}: dtype {dtype!r} is not one of "
                           f"{', '.join(sorted(WIRE_DTYPES))}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise InvalidInput(f"tensor {name!r}: shape must be a list of at most 8 sizes >= 0")
    expected = math.prod(shape) * _ITEMSIZE[dtype]
    buffer = memoryview(frame)
    if buffer.nbytes != expected:
        raise InvalidInput(f"tensor {name!r}: {buffer.nbytes} bytes do not match dtype {dtype} "
                           f"and shape {shape} ({expected} bytes)")
    return name, np.frombuffer(buffer, dtype=dtype).reshape(shape)


def decode_reply(frames: Sequence) -> Message:
    """Parse a reply on the client side (error replies included)."""
    return decode(frames, tensor_key="outputs", kinds=REQUEST_TYPES + (ERROR,))
