"""#26 finding 10: a 16-bit image at the pixel limit cost seconds and over half a gigabyte
in its conversion to 8 bits (float64 arrays of the whole image). The conversion is now a
table of the same formula for integer images and strips of rows for float images: the
result equals the old formula to the last value, with temporaries bounded by a strip."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from sightwise.data import decode


def old_formula(arr: np.ndarray, top: float) -> np.ndarray:
    """The conversion as it was (the reference)."""
    return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def test_every_16_bit_value_converts_as_before():
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(decode._scale_to_u8(every, 65535.0), old_formula(every, 65535.0))
    dim = np.array([0, 100, 200, 255, 256, 385, 386, 65535], np.uint16)  # #25's dim example
    assert decode._scale_to_u8(dim, 65535.0).tolist() == [0, 0, 1, 1, 1, 1, 2, 255]


@pytest.mark.parametrize("dtype,top", [(np.int32, 65535.0), (np.int64, 65535.0),
                                       (np.uint32, 65535.0), (np.int8, 255.0),
                                       (np.int16, 255.0), (np.uint8, 255.0)])
def test_other_integer_types_saturate_as_before(dtype, top):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(info.min, info.max, 20_000, dtype=dtype, endpoint=True),
                             np.clip([info.min, info.max, 0, 1, 255], info.min,
                                     info.max).astype(dtype)])
    np.testing.assert_array_equal(decode._scale_to_u8(values, top), old_formula(values, top))


def test_float_images_convert_as_before_across_strip_boundaries():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.7, decode.STRIP_PIXELS * 2 + 17).astype(np.float32)
    values[[3, decode.STRIP_PIXELS]] = [np.nan, np.inf]
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(decode._scale_to_u8(values, 255.0), old_formula(values, 255.0))


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "F-unit"])
def test_to_rgb_gives_the_old_pixels(mode):
    rng = np.random.default_rng(2)
    if mode == "I;16":
        arr = rng.integers(0, 65535, (300, 700), dtype=np.uint16)
    elif mode == "I":
        arr = rng.integers(-70_000, 140_000, (300, 700)).astype(np.int32)
    else:
        arr = rng.random((300, 700)).astype(np.float32) * (1.0 if mode == "F-unit" else 900.0)
    img = Image.fromarray(arr)
    before = np.asarray(img)
    if img.mode == "F" and before.max(initial=0) <= 1.0:
        before = before * 255.0
    want = old_formula(before, 255.0 if img.mode == "F" else 65535.0)
    got = np.asarray(decode.to_rgb(img))
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))


def test_a_16_bit_png_converts_with_temporaries_bounded_by_a_strip():
    """numpy's allocations while converting a 12 MP 16-bit PNG: the 8-bit result plus a
    strip, not float64 copies of the image (the old code peaked at ~18 bytes a pixel)."""
    h, w = 3000, 4000
    ramp = (np.add.outer(np.arange(h, dtype=np.uint32) * 7, np.arange(w, dtype=np.uint32))
            % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.load()
    assert img.mode == "I;16"
    tracemalloc.start()
    try:
        out = decode.to_rgb(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < h * w + 12 * decode.STRIP_PIXELS, peak / (h * w)
    np.testing.assert_array_equal(np.asarray(out)[..., 0], old_formula(ramp, 65535.0))
