"""Wire format: frame 0 = message type, frame 1 = msgpack header, then one raw frame per tensor.

Request  [TYPE, {"v", "id", ...}, *tensors]      TYPE in INFER | MODELS | STATS | PING |
                                                 REGISTER | UNREGISTER | REGION_STATUS |
                                                 LOAD | UNLOAD
Reply    [TYPE, {"v", "id", ...}, *tensors]      same TYPE on success
Error    [ERROR, {"v", "id", "code", "message"}]
INFER request header: {"model", "deadline_ms"?, "priority"?, "inputs": [{"name","dtype","shape"}]}
INFER reply header:   {"outputs": [{"name","dtype","shape"}], "timings": {queue_ms, device_ms, total_ms}}
Tensors are C-contiguous raw little-endian bytes, decoded without a copy (np.frombuffer). A
"dtype" carries its byte order ("<f4", "|u1"; a bare "float32" is read as little-endian); a
big-endian array is converted by the sender (one copy), ">f4" is refused. No pickle, ever.
Shared memory (serve/shm.py): REGISTER / UNREGISTER {"region": NAME} -> {"region", "bytes"};
REGION_STATUS -> {"regions": [{"region", "bytes", "in_flight"}]}; REGISTER may ask
"writable": true (output targets). An input spec with "region": NAME and "offset": BYTES names
bytes in a registered region and has no frame. An INFER request's "targets" (region specs
only) name where outputs are to be written; the reply's spec of such an output carries the
same region and offset, and no frame.
Model control (admins only; serve/queries.py): LOAD {"model": ENTRY} where ENTRY is a config
file's model entry (name, path, slo_ms, ...) with an absolute path -> {"model", "version",
"change"}; UNLOAD {"model": NAME} -> {"model", "drained"}; MODELS lists what is served.
This module knows nothing of sockets: frames are bytes-like objects (bytes, memoryview).
An INFER request's fields are written (encode_infer) and read (decode_request) only here, and
checked by one function for both sides (_fields); what needs the model is the server's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import msgpack
import numpy as np

from edgesched import dtypes
from edgesched.errors import InvalidInput
from edgesched.types import Priority, Timings

PROTOCOL_VERSION = 1
INFER, MODELS, STATS, PING, ERROR = b"INFER", b"MODELS", b"STATS", b"PING", b"ERROR"
REGISTER, UNREGISTER, REGION_STATUS = b"REGISTER", b"UNREGISTER", b"REGION_STATUS"
REGION_TYPES = (REGISTER, UNREGISTER, REGION_STATUS)
LOAD, UNLOAD = b"LOAD", b"UNLOAD"
CONTROL_TYPES = (LOAD, UNLOAD)
REQUEST_TYPES = (INFER, MODELS, STATS, PING) + REGION_TYPES + CONTROL_TYPES
REPLY_TYPES = REQUEST_TYPES + (ERROR,)
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
WIRE_DTYPES = dtypes.NAMES
# numpy computes dtype.name in Python (~5 us a call): look wire spellings up instead.
_WIRE_OF = {t.np_dtype: t.wire for t in dtypes.TYPES}
_TIMINGS = ("queue_ms", "device_ms", "total_ms")     # Timings' fields in order (a test checks)
_NUMBERS = (int, float)          # exact types: msgpack gives no subclasses, and bool is none


@dataclass(frozen=True)
class Message:
    kind: bytes
    header: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    timings: Timings | None = None       # an INFER reply's, when the server sent them

    @property
    def id(self):
        return self.header.get("id")


@dataclass(frozen=True)
class InferRequest:
    """One INFER request, its fields checked (`infer_request` on the client, `decode_request`
    on the server); only what needs the model (its name served, tensors fitting its specs)
    is left to the server."""

    id: int
    model: str
    inputs: Mapping[str, np.ndarray]
    deadline_ms: float | None = None     # relative to arrival; <= 0: already passed
    priority: Priority | None = None     # None: the model's own class
    # output name -> where to write it: arrays in a writable registered region (client),
    # RegionRef (server)
    targets: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionRef:
    """An input named by reference: `shape` of `dtype` at `offset` bytes in `region` (a
    registered shared-memory region; the server resolves it, serve/shm.py)."""

    region: str
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def pack_header(header: dict) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, **header}, use_bin_type=True)


def tensor_frames(arrays: Sequence[tuple[str, np.ndarray]],
                  locate: Callable[[np.ndarray], tuple[str, int] | None] | None = None
                  ) -> tuple[list[dict], list[np.ndarray]]:
    """Specs and contiguous arrays ready to send as frames (copy only if not contiguous).
    locate(array): (region, offset) where the array lives in a registered shared-memory region
    (sent by reference, no frame), or None."""
    specs, frames = [], []
    for name, array in arrays:
        where = None if locate is None else locate(array)
        if where is not None:
            specs.append({"name": name, "dtype": _WIRE_OF[array.dtype], "shape":
                          list(array.shape), "region": where[0], "offset": where[1]})
            continue
        array = np.asarray(array, order="C")      # ascontiguousarray would make 0-d arrays 1-d
        spelling = _WIRE_OF.get(array.dtype)
        if spelling is None and array.dtype.hasobject:   # its bytes are pointers: never sent
            raise InvalidInput(f"tensor {name!r} holds Python objects (dtype object, e.g. "
                               "strings), which have no wire form")
        if spelling is None:                      # big-endian, or not served (server names it)
            array = dtypes.to_little_endian(array)
            spelling = _WIRE_OF.get(array.dtype) or array.dtype.name
        specs.append({"name": name, "dtype": spelling, "shape": list(array.shape)})
        frames.append(array)
    return specs, frames


def encode(kind: bytes, header: dict, tensors: Mapping[str, np.ndarray] | None = None,
           tensor_key: str = "inputs", locate=None) -> list:
    """Frames for one message; tensor frames are the arrays themselves (zero-copy send)."""
    if not tensors:
        return [kind, pack_header(header)]
    specs, frames = tensor_frames(list(tensors.items()), locate)
    return [kind, pack_header({**header, tensor_key: specs}), *frames]


def encode_error(request_id, error) -> list:
    return [ERROR, pack_header({"id": request_id, "code": error.code, "message": str(error)})]


# --- model control -------------------------------------------------------------------------

def encode_load(request_id: int, entry: Mapping) -> list:
    """LOAD: `entry` is a config file's model entry (its keys are checked by the server)."""
    return [LOAD, pack_header({"id": request_id, "model": dict(entry)})]


def encode_unload(request_id: int, model: str) -> list:
    return [UNLOAD, pack_header({"id": request_id, "model": model})]


def decode_load(header: dict) -> dict:
    entry = header.get("model")
    if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
        raise InvalidInput("LOAD header lacks a 'model' map (a config file's model entry)")
    return entry


def decode_unload(header: dict) -> str:
    model = header.get("model")
    if not isinstance(model, str):
        raise InvalidInput("UNLOAD header lacks a string 'model'")
    return model


# --- INFER requests and replies -------------------------------------------------------------

def infer_request(request_id: int, model: str, inputs: Mapping[str, np.ndarray],
                  deadline_ms: float | None = None,
                  priority: Priority | str | None = None,
                  targets: Mapping[str, np.ndarray] | None = None) -> InferRequest:
    """A request from a caller's Python values: arrays (anything np.asarray takes), a deadline
    float() takes, a Priority or its value. InvalidInput, as the server would say it."""
    # type() first: a dict (the usual case) skips the ABC check (~0.3 us)
    if not (type(inputs) is dict or isinstance(inputs, Mapping)) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of name -> numpy array")
    if deadline_ms is not None:
        try:
            deadline_ms = float(deadline_ms)
        except (TypeError, ValueError):
            pass                               # _fields names the value
    model, deadline_ms, priority = _fields(model, deadline_ms, priority)
    if targets is not None and not (isinstance(targets, Mapping) and all(
            isinstance(n, str) and isinstance(a, np.ndarray) for n, a in targets.items())):
        raise InvalidInput("outputs must be a mapping of output name -> numpy array (in a "
                           "region registered writable)")
    return InferRequest(request_id, model, {n: np.asarray(a) for n, a in inputs.items()},
                        deadline_ms, priority, dict(targets or {}))


def encode_infer(request: InferRequest, locate=None) -> list:
    header = {"id": request.id, "model": request.model}
    if request.deadline_ms is not None:
        header["deadline_ms"] = request.deadline_ms
    if request.priority is not None:
        header["priority"] = request.priority.value
    if request.targets:
        specs, frames = tensor_frames(list(request.targets.items()), locate)
        if frames:
            name = next(n for n, a in request.targets.items()
                        if (locate and locate(a)) is None)
            raise InvalidInput(f"output target {name!r} does not lie (C-contiguous, little-"
                               "endian) in a region this client registered writable")
        header["targets"] = specs
    return encode(INFER, header, request.inputs, locate=locate)


def encode_result(request_id: int, outputs: Mapping[str, np.ndarray], timings: Timings,
                  written: Mapping[str, RegionRef] | None = None) -> list:
    """An INFER reply: the outputs and where the request's time went. `written`: outputs
    already written into the client's region (named by reference, no frame)."""
    header = {"id": request_id, "timings": {"queue_ms": timings.queue_ms,
                                            "device_ms": timings.device_ms,
                                            "total_ms": timings.total_ms}}
    where = None
    if written:
        at = {id(outputs[n]): (ref.region, ref.offset) for n, ref in written.items()}
        where = lambda array: at.get(id(array))  # noqa: E731 (tensor_frames' locate)
    return encode(INFER, header, outputs, tensor_key="outputs", locate=where)


def _fields(model: object, deadline_ms: object,
            priority: object) -> tuple[str, float | None, Priority | None]:
    """An INFER request's checked model, deadline_ms and priority, for both sides. A bad
    deadline or priority carries the model's name (e.model): the server looks the model up
    first (UnknownModel wins) and counts the error against a served one."""
    if not isinstance(model, str):
        raise InvalidInput("INFER header lacks a string 'model'")
    if priority is not None:
        try:
            priority = Priority(priority)
        except ValueError:
            raise _about(model, f"priority {priority!r} is not realtime or best_effort") \
                from None
    # Any number of milliseconds, inf included (no deadline); NaN compares false to all.
    if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(
            deadline_ms, (int, float)) or deadline_ms != deadline_ms):
        raise _about(model, f"deadline_ms must be a number of milliseconds, got {deadline_ms!r}")
    return model, deadline_ms, priority


def _about(model: str, message: str) -> InvalidInput:
    error = InvalidInput(message)
    error.model = model
    return error


def _read_timings(value: object) -> Timings | None:
    if value is None:
        return None
    try:
        times = value["queue_ms"], value["device_ms"], value["total_ms"]
    except (TypeError, KeyError):         # not a map, or a time missing
        times = ()
    if len(times) != 3 or not all(type(v) in _NUMBERS for v in times):
        raise InvalidInput(f"reply 'timings' must map {', '.join(_TIMINGS)} to numbers")
    return Timings(float(times[0]), float(times[1]), float(times[2]))


# --- decoding -------------------------------------------------------------------------------

def decode(frames: Sequence, tensor_key: str = "inputs",
           kinds: Sequence[bytes] = REQUEST_TYPES) -> Message:
    """Parse one message's frames; any defect raises InvalidInput with a one-line reason."""
    return _parse(frames, kinds, tensor_key, Message)


def decode_request(frames: Sequence) -> Message | InferRequest:
    """The server's reading of a request: an INFER as an InferRequest, others as a Message."""
    return _parse(frames, REQUEST_TYPES, "inputs", _request)


def decode_reply(frames: Sequence) -> Message:
    """Parse a reply on the client side (error replies included)."""
    return _parse(frames, REPLY_TYPES, "outputs", _reply)


def _request(kind: bytes, header: dict, tensors: dict) -> Message | InferRequest:
    if kind != INFER:
        return Message(kind, header, tensors)
    model, deadline_ms, priority = _fields(header.get("model"), header.get("deadline_ms"),
                                           header.get("priority"))
    return InferRequest(header["id"], model, tensors, deadline_ms, priority,
                        _targets(header.get("targets")))


def _targets(specs: object) -> dict[str, RegionRef]:
    """An INFER request's output targets: region specs only (there are no frames for them)."""
    if specs is None:
        return {}
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise InvalidInput(f"header field 'targets' must be a list of at most {MAX_TENSORS} "
                           "region specs")
    targets = {}
    for i, spec in enumerate(specs):
        if not (isinstance(spec, dict) and "region" in spec):
            raise InvalidInput(f"target {i} must name a region and an offset")
        name, ref = _tensor(spec, None, i)
        if name in targets:
            raise InvalidInput(f"output target {name!r} is named twice")
        targets[name] = ref
    return targets


def _reply(kind: bytes, header: dict, tensors: dict) -> Message:
    timings = _read_timings(header.get("timings")) if kind == INFER else None
    return Message(kind, header, tensors, timings)


def _parse(frames: Sequence, kinds: Sequence[bytes], tensor_key: str,
           build: Callable[[bytes, dict, dict], object]):
    if len(frames) < 2:
        raise InvalidInput(f"a message needs at least 2 frames (type, header), got {len(frames)}")
    kind = bytes(frames[0])
    if kind not in kinds:
        raise InvalidInput(f"unknown message type {kind[:16]!r}")
    header = decode_header(frames[1], error_reply=kind == ERROR)
    try:
        return build(kind, header, _tensors(header, frames, tensor_key))
    except InvalidInput as e:
        e.request_id = header["id"]       # lets the server address its error reply
        raise


def _tensors(header: dict, frames: Sequence, tensor_key: str) -> dict[str, np.ndarray]:
    specs = header.get(tensor_key, [])
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise InvalidInput(f"header field {tensor_key!r} must be a list of at most "
                           f"{MAX_TENSORS} tensor specs")
    by_frame = [i for i, spec in enumerate(specs)
                if not (isinstance(spec, dict) and "region" in spec)]
    if len(frames) - 2 != len(by_frame):
        raise InvalidInput(f"header lists {len(by_frame)} tensors but {len(frames) - 2} tensor "
                           "frames follow" + ("" if len(by_frame) == len(specs) else
                                              " (region inputs have no frame)"))
    frame_of = dict(zip(by_frame, frames[2:]))
    tensors = dict(_tensor(spec, frame_of.get(i), i) for i, spec in enumerate(specs))
    if len(tensors) != len(specs):
        raise InvalidInput("tensor names repeat: " + ", ".join(s["name"] for s in specs))
    return tensors


def decode_header(frame, error_reply: bool = False) -> dict:
    """A header must carry an integer id; only an ERROR reply may carry None (the server could
    not read the request it answers)."""
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
    if not (isinstance(rid, int) and not isinstance(rid, bool) or error_reply and rid is None
            and "id" in header):
        raise InvalidInput("header lacks an integer 'id'")
    return header


def _tensor(spec: object, frame, i: int) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput(f"tensor spec {i} must be a map with a string 'name'")
    name, dtype, shape = spec["name"], spec.get("dtype"), spec.get("shape")
    try:
        element = dtypes.from_wire(dtype)
    except dtypes.UnsupportedDtype as e:
        raise InvalidInput(f"tensor {name!r}: {e}") from None
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise InvalidInput(f"tensor {name!r}: shape must be a list of at most 8 sizes >= 0")
    expected = math.prod(shape) * element.itemsize
    if frame is None:
        return name, _region_ref(name, spec, element, shape)
    buffer = memoryview(frame)
    if buffer.nbytes != expected:
        raise InvalidInput(f"tensor {name!r}: {buffer.nbytes} bytes do not match dtype {dtype} "
                           f"and shape {shape} ({expected} bytes)")
    return name, np.frombuffer(buffer, dtype=element.np_dtype).reshape(shape)


def _region_ref(name: str, spec: dict, element, shape: list):
    region, offset = spec.get("region"), spec.get("offset")
    if not isinstance(region, str) or not (isinstance(offset, int) and not isinstance(
            offset, bool) and 0 <= offset < 2**63):
        raise InvalidInput(f"tensor {name!r}: a region input needs a string 'region' and an "
                           "integer 'offset' >= 0")
    return RegionRef(region, offset, element.np_dtype, tuple(shape))
