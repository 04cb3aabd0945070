"""Resizing and normalisation (sightwise.data.preprocess) against Pillow and hand sums."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sightwise.data.preprocess import Preprocessing, normalize, resize_rgb


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _centred_square(w: int, h: int, side: int) -> Image.Image:
    """Black w x h canvas with a white side x side square in its exact centre."""
    arr = np.zeros((h, w, 3), np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    arr[top:top + side, left:left + side] = 255
    return Image.fromarray(arr)


def _brightness_centroid(arr: np.ndarray) -> tuple[float, float]:
    m = arr.astype(np.float64).mean(axis=2)
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return float((yy * m).sum() / m.sum()), float((xx * m).sum() / m.sum())


@pytest.mark.parametrize("interp, resample", [("bicubic", Image.Resampling.BICUBIC),
                                              ("bilinear", Image.Resampling.BILINEAR)])
def test_stretch_matches_pillow_resize(interp, resample):
    img = _noise(50, 30)
    pre = Preprocessing(size=24, resize="stretch", interpolation=interp)
    out = resize_rgb(img, pre)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(img.resize((24, 24), resample)))


def test_center_crop_matches_resize_short_side_then_crop_centre():
    img = _noise(60, 30)
    out = resize_rgb(img, Preprocessing(size=16, resize="center-crop"))
    ref = img.resize((32, 16), Image.Resampling.BICUBIC).crop((8, 0, 24, 16))
    assert out.shape == (16, 16, 3) and np.array_equal(out, np.asarray(ref))


@pytest.mark.parametrize("w, h", [(64, 48), (48, 64), (96, 32), (40, 40)])
def test_center_crop_keeps_a_centred_square_in_the_centre(w, h):
    out = resize_rgb(_centred_square(w, h, 8), Preprocessing(size=24, resize="center-crop"))
    assert out.shape == (24, 24, 3)
    cy, cx = _brightness_centroid(out)
    assert abs(cy - 11.5) < 0.5 and abs(cx - 11.5) < 0.5
    assert out[11:13, 11:13].min() > 200  # the square survives the crop...
    assert out[0, 0].max() < 20 and out[-1, -1].max() < 20  # ...and the corners stay dark


def test_center_crop_cuts_the_sides_that_stretch_keeps():
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :, 2] = 255  # blue sides
    arr[:, 32:64] = (255, 0, 0)  # the red centre square (32 x 32)
    img = Image.fromarray(arr)
    crop = resize_rgb(img, Preprocessing(size=16, resize="center-crop"))
    stretch = resize_rgb(img, Preprocessing(size=16, resize="stretch"))
    assert (crop[:, 2:-2, 0] > 200).all() and (crop[:, 2:-2, 2] < 50).all()  # only red
    assert (stretch[:, 0, 2] > 200).all() and (stretch[:, -1, 2] > 200).all()  # blue kept


@pytest.mark.parametrize("w, h", [(592, 246), (121, 289), (50, 50)])
def test_letterbox_keeps_the_aspect_ratio_and_mirrors_the_image_into_the_rest(w, h):
    img = _noise(w, h, seed=w)
    pre = Preprocessing(size=64, resize="letterbox")
    out = resize_rgb(img, pre)
    left, top, bw, bh = pre.content_box(w, h)
    assert max(bw, bh) == 64 and abs(bw / bh - w / h) < 0.05 * (w / h) + 1 / min(bw, bh)
    inner = np.asarray(img.resize((bw, bh), Image.Resampling.BICUBIC))
    assert np.array_equal(out[top:top + bh, left:left + bw], inner)
    # the fill is the image mirrored about its edges (numpy's "symmetric" padding)
    ref = np.pad(inner, ((top, 64 - bh - top), (left, 64 - bw - left), (0, 0)), mode="symmetric")
    assert np.array_equal(out, ref)
    if top:
        assert np.array_equal(out[top - 1], inner[0])  # the row above the image repeats its first row


@pytest.mark.parametrize("mode", ["stretch", "center-crop", "letterbox"])
def test_same_size_square_is_unchanged(mode):
    img = _noise(32, 32)
    out = resize_rgb(img, Preprocessing(size=32, resize=mode))
    assert np.array_equal(out, np.asarray(img))


@settings(max_examples=40, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), size=st.integers(8, 48),
       mode=st.sampled_from(["stretch", "center-crop", "letterbox"]))
def test_any_shape_becomes_size_by_size(w, h, size, mode):
    out = resize_rgb(Image.new("RGB", (w, h), (10, 20, 30)), Preprocessing(size=size, resize=mode))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_normalize_against_a_hand_computation():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    pre = Preprocessing(size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    out = normalize(batch, pre)
    assert out.shape == (2, 3, 5, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    for n in range(2):
        for c in range(3):
            for y in range(5):
                for x in range(4):
                    want = (batch[n, y, x, c] / 255.0 - pre.mean[c]) / pre.std[c]
                    assert out[n, c, y, x] == pytest.approx(want, abs=1e-5)


def test_normalize_default_maps_to_minus_one_one():
    batch = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    out = normalize(batch, Preprocessing(size=8))
    assert out[0, :, 0, 0] == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resize": "crop"}, "unknown resize mode"),
        ({"interpolation": "nearest"}, "unknown interpolation"),
        ({"size": 7}, "outside 8..1024"),
        ({"size": 1025}, "outside 8..1024"),
    ],
)
def test_preprocessing_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


@pytest.mark.parametrize("size", [8, 1024])
def test_size_limits_are_inclusive(size):
    assert Preprocessing(size=size).size == size


def test_preprocessing_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Preprocessing().size = 64  # type: ignore[misc]


def test_to_dict_from_dict_round_trip_through_json():
    pre = Preprocessing(size=96, resize="center-crop", interpolation="bilinear",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    d = pre.to_dict()
    assert d == {"size": 96, "resize": "center-crop", "interpolation": "bilinear",
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    back = Preprocessing.from_dict(json.loads(json.dumps(d)))  # lists come back from JSON
    assert back == pre and isinstance(back.mean, tuple) and isinstance(back.std, tuple)


def test_from_dict_validates():
    d = Preprocessing().to_dict() | {"resize": "squash"}
    with pytest.raises(ValueError, match="unknown resize mode"):
        Preprocessing.from_dict(d)
