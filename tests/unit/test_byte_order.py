"""Byte order on the wire: every dtype carries it, big-endian arrays are converted by the sender
and ">f4" is refused, so no array is ever read in the wrong order."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from edgesched import dtypes
from edgesched.errors import InvalidInput
from edgesched.serve import wire


def transmit(frames: list) -> list[bytes]:
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


@pytest.mark.parametrize("element", dtypes.TYPES, ids=lambda t: t.name)
def test_wire_spelling_names_the_byte_order(element):
    assert element.wire[0] in "<|"
    assert dtypes.from_wire(element.wire) is element
    assert dtypes.from_wire(element.name) is element       # protocol 1: little-endian
    assert np.dtype(element.wire) == element.np_dtype       # on this little-endian host


@pytest.mark.parametrize("element", [t for t in dtypes.TYPES if t.itemsize > 1],
                         ids=lambda t: t.name)
def test_big_endian_arrays_are_converted_by_the_sender(element):
    values = np.arange(6, dtype=element.np_dtype).reshape(2, 3)
    big = values.astype(element.np_dtype.newbyteorder(">"))
    request = wire.infer_request(1, "m", {"x": big})
    frames = transmit(wire.encode_infer(request))
    spec = msgpack.unpackb(frames[1])["inputs"][0]
    assert spec["dtype"] == element.wire
    got = wire.decode_request(frames).inputs["x"]
    assert got.dtype == element.np_dtype
    np.testing.assert_array_equal(got, values)


def test_little_endian_and_one_byte_arrays_are_sent_without_a_copy():
    for array in (np.zeros(4, "<f4"), np.zeros(4, np.uint8), np.zeros(4, "=i8")):
        assert wire.tensor_frames([("x", array)])[1][0] is array


@pytest.mark.parametrize("spelling", [">f4", ">i8", ">u2", ">f2"])
def test_a_big_endian_dtype_on_the_wire_is_refused_by_name(spelling):
    header = {"v": wire.PROTOCOL_VERSION, "id": 3, "model": "m",
              "inputs": [{"name": "x", "dtype": spelling, "shape": [2]}]}
    frames = [wire.INFER, msgpack.packb(header), bytes(2 * np.dtype(spelling).itemsize)]
    with pytest.raises(InvalidInput, match="big-endian") as caught:
        wire.decode_request(frames)
    assert "\n" not in str(caught.value) and caught.value.request_id == 3


def test_to_little_endian_leaves_unserved_types_for_the_caller_to_name():
    array = np.zeros(2, ">c8")
    assert dtypes.to_little_endian(array).dtype == np.dtype("<c8")
    with pytest.raises(dtypes.UnsupportedDtype):
        dtypes.from_numpy(array.dtype)


# --- region inputs: a spec with "region" has no frame ------------------------------------------

def _header(*specs) -> bytes:
    return msgpack.packb({"v": wire.PROTOCOL_VERSION, "id": 9, "model": "m",
                          "inputs": list(specs)})


def test_region_specs_take_no_frame_and_frames_still_pair_with_the_others():
    frame_spec = {"name": "a", "dtype": "<f4", "shape": [2]}
    region_spec = {"name": "b", "dtype": "|u1", "shape": [3, 4], "region": "psm_x",
                   "offset": 64}
    got = wire.decode_request([wire.INFER, _header(region_spec, frame_spec),
                               np.arange(2, dtype="<f4").tobytes()])
    assert got.inputs["b"] == wire.RegionRef("psm_x", 64, np.dtype(np.uint8), (3, 4))
    assert got.inputs["b"].nbytes == 12
    np.testing.assert_array_equal(got.inputs["a"], [0, 1])


@pytest.mark.parametrize("extra, match", [
    ({"region": 3}, "string 'region'"), ({"offset": -8}, "integer 'offset'"),
    ({"offset": True}, "integer 'offset'"), ({"offset": None}, "integer 'offset'"),
    ({"dtype": ">f4"}, "big-endian")])
def test_bad_region_specs_are_invalid_input(extra, match):
    spec = {"name": "b", "dtype": "<f4", "shape": [2], "region": "r", "offset": 0, **extra}
    with pytest.raises(InvalidInput, match=match):
        wire.decode_request([wire.INFER, _header(spec)])


def test_a_region_spec_with_a_frame_too_is_a_frame_count_error():
    spec = {"name": "b", "dtype": "<f4", "shape": [2], "region": "r", "offset": 0}
    with pytest.raises(InvalidInput, match="region inputs have no frame"):
        wire.decode_request([wire.INFER, _header(spec), bytes(8)])


def test_locate_sends_only_arrays_inside_a_region_by_reference():
    from multiprocessing import shared_memory

    from edgesched.serve.regions import ClientRegions, shared_array
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        table = ClientRegions()
        region = table.add(shm)
        inside = shared_array(region, (4, 4), np.float32, offset=128)
        assert table.locate(inside) == (region.name, 128)
        assert table.locate(inside[:, ::2]) is None            # strided: sent as a frame
        assert table.locate(np.zeros((4, 4), np.float32)) is None
        specs, frames = wire.tensor_frames([("x", inside), ("y", np.ones(2))], table.locate)
        assert specs[0]["region"] == region.name and len(frames) == 1
        with pytest.raises(InvalidInput, match="no room"):
            shared_array(region, (1025,), np.float32)
        del inside
    finally:
        shm.close()
        shm.unlink()
