"""Safe decoding (sightwise.data.decode) against Pillow's own conversions and hand sums.

Every unusable input must raise ImageDecodeError with a reason; every odd-but-valid one
must come out as 8-bit RGB of the right size with the expected pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from sightwise.data.decode import array_to_image, decode_image, is_image_path, to_rgb
from sightwise.errors import ImageDecodeError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise_rgb(h: int = 10, w: int = 14, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 4x4 PNG whose IHDR claims width x height, with a valid CRC so Pillow
    believes the header (a decompression bomb's signature: tiny file, huge canvas)."""
    data = _encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG")
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the chunk type
    body = bytearray(data[16:29])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return data[:16] + bytes(body) + crc + data[33:]


def _reason(source, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(source, **kw)
    return str(info.value)


# --- allowlisted formats ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_allowlisted_formats_decode_to_rgb_of_the_right_size(fmt):
    img = _noise_rgb(10, 14)
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (14, 10)
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: the very same pixels
        assert np.array_equal(np.asarray(out), np.asarray(img))


def test_path_and_bytes_give_the_same_pixels(tmp_path):
    data = _encode(_noise_rgb(), "PNG")
    (tmp_path / "x.png").write_bytes(data)
    for source in (tmp_path / "x.png", str(tmp_path / "x.png"), bytearray(data), memoryview(data)):
        assert np.array_equal(np.asarray(decode_image(source)), np.asarray(decode_image(data)))


# --- unusable input: a specific reason each --------------------------------------------


def test_truncated_jpeg_is_refused():
    data = _encode(_noise_rgb(64, 64), "JPEG")
    assert "truncated" in _reason(data[: len(data) // 2])


def test_jpeg_cut_inside_its_header_is_refused():
    data = _encode(_noise_rgb(64, 64), "JPEG")
    assert "unreadable image header" in _reason(data[:50])


def test_zero_byte_file_is_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(tmp_path / "empty.png") == "empty file"


def test_text_file_named_jpg_is_refused(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are my notes, not a photo\n")
    assert _reason(tmp_path / "notes.jpg") == "not an image (unrecognised format)"


def test_missing_file_and_directory_are_refused(tmp_path):
    assert _reason(tmp_path / "nope.png") == "file not found"
    assert _reason(tmp_path) == "is a directory"


def test_header_over_the_pixel_limit_is_refused_before_decoding():
    # 8000 x 6000 = 48 MP: above our 40 MP limit, below Pillow's own bomb threshold.
    reason = _reason(_png_with_header_size(8000, 6000))
    assert "8000x6000" in reason and "decompression bomb" in reason


def test_max_pixels_argument_is_honoured():
    data = _encode(_noise_rgb(10, 14), "PNG")
    assert "exceeds the limit of 100" in _reason(data, max_pixels=100)
    assert decode_image(data, max_pixels=140).size == (14, 10)


def test_30000_square_png_header_is_refused_as_a_bomb():
    # 900 MP trips Pillow's own check inside Image.open (> 2 x Image.MAX_IMAGE_PIXELS);
    # that must still surface as ImageDecodeError, never PIL's DecompressionBombError.
    data = _png_with_header_size(30000, 30000)
    assert len(data) < 200
    assert "decompression bomb" in _reason(data)


def test_gif_is_not_allowed():
    data = _encode(Image.new("P", (4, 4)), "GIF")
    assert _reason(data) == "format GIF not allowed"


def test_eps_is_not_allowed():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    assert _reason(eps) == "format EPS not allowed"


# --- odd but valid: RGB out with the expected pixels -----------------------------------


def test_16bit_png_is_scaled_from_the_full_16bit_range():
    values = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (5, 1)
    expected = np.floor(values.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    assert expected.tolist() == [[0, 1, 4, 128, 255]]  # the hand computation
    arr = np.asarray(out)
    for c in range(3):
        assert np.array_equal(arr[..., c], expected)


def test_dark_16bit_png_is_not_stretched():
    values = np.array([[0, 100, 200, 255]], np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    expected = np.floor(values.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(decode_image(data))[..., 0], expected)  # [0, 0, 1, 1]


def test_cmyk_jpeg_matches_pillows_conversion():
    data = _encode(_noise_rgb().convert("CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    out = decode_image(data)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(ref))


def test_rgba_png_composites_transparent_pixels_on_white():
    rgba = np.array(
        [[[10, 20, 30, 0], [10, 20, 30, 255]], [[0, 0, 0, 128], [200, 100, 50, 64]]], np.uint8
    )
    out = np.asarray(decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")), np.float64)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)  # "over" a white background
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque -> unchanged
    assert np.abs(out - expected).max() <= 1


def test_palette_png_with_transparency_becomes_white_where_transparent():
    idx = np.zeros((4, 4), np.uint8)
    idx[:2] = 1
    pal = Image.fromarray(idx, "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    data = _encode(pal, "PNG", transparency=0)  # index 0 (red) is transparent
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    out = np.asarray(decode_image(data))
    assert (out[:2] == [0, 0, 255]).all()  # opaque blue kept
    assert (out[2:] == 255).all()  # transparent red -> white, not red


def test_palette_png_without_transparency_matches_pillow():
    img = _noise_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    data = _encode(img, "PNG")
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(ref))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_matches_pillow_and_repeats_the_channel(mode):
    grey = _noise_rgb().convert(mode)
    data = _encode(grey, "PNG")
    out = np.asarray(decode_image(data))
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(out, ref)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_greyscale_with_alpha_composites_on_white():
    la = np.array([[[10, 0], [10, 255]]], np.uint8)
    out = np.asarray(decode_image(_encode(Image.fromarray(la, "LA"), "PNG")))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 10, 10]


def test_exif_orientation_6_is_applied():
    img = _noise_rgb(10, 14)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = _encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data)
    assert img.size == (14, 10) and out.size == (10, 14)  # width and height swap
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(out), np.rot90(stored, k=-1))  # 90 deg clockwise
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(out), np.asarray(ref))


# --- helpers ---------------------------------------------------------------------------


def test_to_rgb_returns_rgb_unchanged():
    img = _noise_rgb()
    assert to_rgb(img) is img


@pytest.mark.parametrize(
    "arr, expected",
    [
        (np.array([[0, 128, 255]], np.uint8), [0, 128, 255]),
        (np.array([[0, 32768, 65535]], np.uint16), [0, 128, 255]),
        (np.array([[[0], [128], [255]]], np.uint8), [0, 128, 255]),  # (H, W, 1)
    ],
)
def test_array_to_image_greyscale(arr, expected):
    out = array_to_image(arr)
    assert out.mode == "RGB" and out.size == (3, 1)
    assert np.asarray(out)[0, :, 0].tolist() == expected


def test_array_to_image_colour_and_rgba():
    rgb = np.asarray(_noise_rgb())
    assert np.array_equal(np.asarray(array_to_image(rgb)), rgb)
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    assert (np.asarray(array_to_image(rgba)) == 255).all()


@pytest.mark.parametrize(
    "name, ok",
    [("a.jpg", True), ("a.JPEG", True), ("a.png", True), ("a.tif", True), ("a.webp", True),
     ("a.bmp", True), ("a.gif", False), ("a.txt", False), (".hidden.png", False),
     ("png", False)],
)
def test_is_image_path(tmp_path, name, ok):
    assert is_image_path(tmp_path / name) is ok
