"""The tensor element types edgesched serves: one table, and a lookup from each spelling of them
(numpy and the wire, ONNX's TensorProto, ONNX Runtime, TensorRT).

Imports numpy only, so the wire, every backend and slicing share it without importing the
libraries it describes: ONNX's enum values are the plain ints they are, ONNX Runtime's type
strings plain strings, and a TensorRT DataType is matched by its member name. tests/unit/
test_dtypes.py checks them against onnx, onnxruntime and the TensorRT fake.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnsupportedDtype(ValueError):
    """An element type edgesched does not serve; str(e) is one line naming it."""


@dataclass(frozen=True)
class ElementType:
    name: str                  # numpy dtype name: TensorSpec.dtype and the wire's "dtype"
    itemsize: int              # bytes per element
    onnx: int                  # onnx.TensorProto.DataType value
    ort: str                   # ONNX Runtime's NodeArg.type
    tensorrt: str | None       # tensorrt.DataType member name; None: TensorRT has no such type

    @property
    def np_dtype(self) -> np.dtype:
        return _NUMPY[self.name]

    @property
    def wire(self) -> str:
        """The wire's spelling, byte order included: "<f4", "|u1" (always little-endian)."""
        return _WIRE[self.name]


# Plain numeric types only: no object, string, complex or sub-byte types are ever served.
TYPES: tuple[ElementType, ...] = (
    ElementType("float32", 4, 1, "tensor(float)", "FLOAT"),
    ElementType("float16", 2, 10, "tensor(float16)", "HALF"),
    ElementType("float64", 8, 11, "tensor(double)", None),
    ElementType("int8", 1, 3, "tensor(int8)", "INT8"),
    ElementType("uint8", 1, 2, "tensor(uint8)", "UINT8"),
    ElementType("int16", 2, 5, "tensor(int16)", None),
    ElementType("uint16", 2, 4, "tensor(uint16)", None),
    ElementType("int32", 4, 6, "tensor(int32)", "INT32"),
    ElementType("uint32", 4, 12, "tensor(uint32)", None),
    # TensorRT 8.6 has no INT64 (its ONNX parser casts int64 I/O to INT32); 10.x has.
    ElementType("int64", 8, 7, "tensor(int64)", "INT64"),
    ElementType("uint64", 8, 13, "tensor(uint64)", None),
    ElementType("bool", 1, 9, "tensor(bool)", "BOOL"),
)
NAMES = frozenset(t.name for t in TYPES)
# ONNX types a model may declare that edgesched refuses, named in the error (values checked
# against onnx.TensorProto by the tests).
ONNX_UNSERVED = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
                 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2",
                 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}

_LITTLE_HOST = bool(np.little_endian)
_NUMPY = {t.name: np.dtype(t.name) for t in TYPES}
# The wire is little-endian whatever the host (every Jetson and x86-64 is): "<f4"; one-byte
# types have no order ("|u1"). numpy spells both with dtype.str.
_WIRE = {t.name: np.dtype(t.name).newbyteorder("<").str for t in TYPES}
_BY_NAME = {t.name: t for t in TYPES}
_BY_NUMPY = {t.np_dtype: t for t in TYPES}
_BY_ONNX = {t.onnx: t for t in TYPES}
_BY_ORT = {t.ort: t for t in TYPES}
_BY_TENSORRT = {t.tensorrt: t for t in TYPES if t.tensorrt is not None}
_SERVED = ", ".join(sorted(NAMES))
# What a wire "dtype" may say: a byte-order string ("<f4") or, as protocol 1 clients sent it,
# the bare name ("float32", read as little-endian). Big-endian strings are named, not guessed.
_BY_WIRE = {**_BY_NAME, **{_WIRE[t.name]: t for t in TYPES}}
_BIG_ENDIAN = {np.dtype(t.name).newbyteorder(">").str: t for t in TYPES if t.itemsize > 1}
WIRE_NAMES = frozenset(_BY_WIRE)


def _unsupported(what: str) -> UnsupportedDtype:
    return UnsupportedDtype(f"{what} is not an element type edgesched serves ({_SERVED})")


def by_name(name: object) -> ElementType:
    """From a numpy dtype name as TensorSpec and the wire spell it ("float32")."""
    element = _BY_NAME.get(name) if isinstance(name, str) else None
    if element is None:
        raise _unsupported(f"dtype {name!r}")
    return element


def from_numpy(dtype: object) -> ElementType:
    """From a numpy dtype (or anything np.dtype takes); non-native byte orders are refused."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise _unsupported(f"dtype {dtype!r}") from None
    element = _BY_NUMPY.get(dtype)
    if element is None:
        raise _unsupported(f"numpy dtype {dtype}")
    return element


def from_wire(spelling: object) -> ElementType:
    """From a wire "dtype": "<f4" or "float32" (little-endian); ">f4" is refused by name."""
    element = _BY_WIRE.get(spelling) if isinstance(spelling, str) else None
    if element is not None:
        return element
    big = _BIG_ENDIAN.get(spelling) if isinstance(spelling, str) else None
    if big is not None:
        raise UnsupportedDtype(f"dtype {spelling!r} is big-endian; the wire is little-endian "
                               f"(send {big.wire!r}: the client converts)")
    raise _unsupported(f"dtype {spelling!r}")


def to_little_endian(array: np.ndarray) -> np.ndarray:
    """`array` in little-endian order: itself when it already is (no copy), else converted
    (one copy). A dtype edgesched does not serve is returned as it is, for the caller to name."""
    order = array.dtype.byteorder
    if order in "<|" or order == "=" and _LITTLE_HOST:
        return array
    return array.astype(array.dtype.newbyteorder("<"))


def from_onnx(elem_type: int) -> ElementType:
    """From an onnx.TensorProto.DataType value (TypeProto.Tensor.elem_type)."""
    element = _BY_ONNX.get(elem_type)
    if element is None:
        raise _unsupported(f"ONNX element type {ONNX_UNSERVED.get(elem_type, elem_type)}")
    return element


def from_ort(type_string: str) -> ElementType:
    """From ONNX Runtime's NodeArg.type, e.g. "tensor(float)"."""
    element = _BY_ORT.get(type_string)
    if element is None:
        raise _unsupported(f"ONNX Runtime type {type_string}")
    return element


def from_tensorrt(data_type: object) -> ElementType:
    """From a tensorrt.DataType member (pybind11 enums have .name; str() is "DataType.X")."""
    name = getattr(data_type, "name", None) or str(data_type).rpartition(".")[2]
    element = _BY_TENSORRT.get(name)
    if element is None:
        raise _unsupported(f"TensorRT type {name}")
    return element
