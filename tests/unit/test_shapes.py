"""edgesched.shapes: fixed shapes and ranges, the one parser, and resolving a model's inputs."""
from __future__ import annotations

import pytest

from edgesched.errors import EdgeschedError
from edgesched.shapes import (
    ShapeError,
    ShapeRange,
    at,
    check,
    file_hint,
    parse_mapping,
    parse_text,
    resolve,
    span,
    to_json,
)
from edgesched.types import TensorSpec

DYNAMIC = (TensorSpec("image", "float32", (None, 3, None, None)),
           TensorSpec("scale", "float32", (1,)))
RANGE = ShapeRange((1, 3, 320, 320), (4, 3, 640, 640), (8, 3, 1280, 1280))


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text and isinstance(e, EdgeschedError)
    return text


def test_text_and_yaml_spellings_give_the_same_ranges():
    assert parse_text("image:1x3x640x640") == ("image", ShapeRange.fixed_at((1, 3, 640, 640)))
    assert parse_text("image:1x3x320x320/4x3x640x640/8x3x1280x1280") == ("image", RANGE)
    assert parse_mapping({"image": {"min": [1, 3, 320, 320], "opt": [4, 3, 640, 640],
                                    "max": [8, 3, 1280, 1280]}}) == {"image": RANGE}
    assert parse_mapping({"image": [1, 3, 640, 640]})["image"].fixed


@pytest.mark.parametrize("raw", [RANGE, ShapeRange.fixed_at((2, 8)), ShapeRange.fixed_at(())])
def test_json_round_trips(raw):
    assert ShapeRange.from_json(raw.to_json()) == raw
    assert to_json({"x": raw}) == {"x": raw.to_json()}


@pytest.mark.parametrize("text", ["image", "image:", "image:1x3x", "image:1x0", "image:1/2",
                                  "image:a x b", ":1x3", "image:2x3/1x3/3x3"])
def test_bad_text_is_one_line(text):
    with pytest.raises(ShapeError) as e:
        parse_text(text)
    one_line(e.value)


@pytest.mark.parametrize("raw", [None, {}, [1, 3], {"image": [0, 3]}, {"image": [True]},
                                 {"image": {"min": [1]}}, {"image": "1x3"}, {3: [1]},
                                 {"image": list(range(1, 11))}])
def test_bad_mappings_are_one_line(raw):
    with pytest.raises(ShapeError) as e:
        parse_mapping(raw)
    one_line(e.value)


def test_contains_and_fits():
    assert RANGE.contains((1, 3, 320, 320)) and RANGE.contains((8, 3, 1280, 1280))
    assert not RANGE.contains((9, 3, 640, 640)) and not RANGE.contains((1, 3, 640))
    assert RANGE.fits((None, 3, None, None)) and not RANGE.fits((1, 3, None, None))
    assert ShapeRange.fixed_at(()).contains(())       # a scalar input


def test_resolve_fills_static_inputs_and_names_a_missing_shape():
    assert resolve("det", DYNAMIC, {"image": RANGE}) == {
        "image": RANGE, "scale": ShapeRange.fixed_at((1,))}
    with pytest.raises(ShapeError) as e:
        resolve("det", DYNAMIC, None)
    assert one_line(e.value) == ("model 'det': input 'image' has dynamic dimensions "
                                 "[?, 3, ?, ?]; give its shape with --shape image:?x3x?x?")


def test_file_hint_says_where_in_which_file():
    with pytest.raises(ShapeError) as e:
        resolve("det", DYNAMIC, {}, file_hint("configs/{odd}.yaml", 2))
    assert one_line(e.value).endswith(
        "give its shape with `shapes: {image: [?, 3, ?, ?]}` (a size for each ?) under "
        "models[2] in configs/{odd}.yaml")


def test_check_leaves_dynamic_inputs_free_but_refuses_wrong_names_and_ranks():
    assert check("det", DYNAMIC, None) == {}
    assert check("det", DYNAMIC, {"image": RANGE}) == {"image": RANGE}
    with pytest.raises(ShapeError, match="has no input 'img'.*image, scale"):
        check("det", DYNAMIC, {"img": RANGE})
    with pytest.raises(ShapeError, match=r"declared \[1\], which shape 2 does not fit"):
        check("det", DYNAMIC, {"scale": ShapeRange.fixed_at((2,))})
    with pytest.raises(ShapeError, match="does not fit"):
        resolve("det", DYNAMIC, {"image": ShapeRange.fixed_at((1, 3, 640))})


def test_points_and_spans():
    assert at({"image": RANGE}, "max") == {"image": ShapeRange.fixed_at((8, 3, 1280, 1280))}
    with pytest.raises(ValueError):
        at({"image": RANGE}, "mean")
    # a tensor that shrinks in one dim as the input grows still gets a valid range
    assert span((1, 64), (4, 16), (8, 8)) == ShapeRange((1, 8), (4, 16), (8, 64))
    with pytest.raises(ShapeError):
        span((1, 2), (1, 2, 3), (1, 2))
