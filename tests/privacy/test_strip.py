"""Photo metadata: found by `image_findings`, removed by `strip_image`, checked by reading
the result back with Pillow (the reference reader), and pixels compared: decoded arrays,
and for JPEG the entropy-coded bytes themselves."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, TiffImagePlugin

from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError
from sightwise.privacy.metadata import image_findings
from sightwise.privacy.strip import strip_image, strip_metadata

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" exif:GPSLatitude="48,51.5N" '
       b'dc:creator="Jane Doe"/></rdf:RDF></x:xmpmeta>')


def _photo(size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    arr = np.stack([xx * 2, yy * 3, (xx + yy)], -1) + rng.integers(0, 30, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    exif[0x0132], exif[0x013B] = "2021:06:01 10:00:00", "Jane Doe"
    if orientation:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    sub[0xA431], sub[0x9003] = "SN-0042", "2021:06:01 10:00:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 30.0), "W", (2.0, 17.0, 40.0)
    return exif


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _read_back(data: bytes) -> tuple[dict, dict, dict]:
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        return dict(exif), dict(exif.get_ifd(0x8825)), dict(im.info)


def _png_chunks(data: bytes, kind: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if ctype == kind:
            out.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return out


def _jpeg_scans(data: bytes) -> bytes:
    """Everything from the first SOS marker to EOI: the compressed pixels."""
    start = data.index(b"\xff\xda")
    return data[start:data.rindex(b"\xff\xd9") + 2]


def test_jpeg_gps_written_by_pillow_is_found_then_removed_without_reencoding():
    original = _save(_photo(), "JPEG", quality=90, exif=_exif(), comment=b"call me", xmp=XMP)
    kinds = {(f["kind"], f["field"]) for f in image_findings(original)}
    assert {("gps", "GPSInfo"), ("exif", "BodySerialNumber"), ("exif", "Artist"),
            ("exif", "DateTimeOriginal"), ("exif", "XMP"), ("exif", "Comment")} <= kinds
    gps = next(f for f in image_findings(original) if f["kind"] == "gps" and "lat" in f)
    assert gps["lat"] == pytest.approx(48 + 51 / 60 + 30 / 3600) and gps["lon"] < 0

    out = strip_image(original)
    assert out.lossless and out.format == "JPEG"
    tags, gps_ifd, info = _read_back(out.data)
    assert tags == {} and gps_ifd == {}
    assert "comment" not in info and "xmp" not in info
    assert image_findings(out.data) == []
    assert _jpeg_scans(out.data) == _jpeg_scans(original)  # same compressed bytes
    np.testing.assert_array_equal(np.asarray(decode_image(out.data)),
                                  np.asarray(decode_image(original)))


def test_orientation_and_icc_profile_survive_so_the_photo_still_looks_the_same():
    icc = _photo().info.get("icc_profile") or b"\0" * 128  # Pillow keeps opaque ICC bytes
    original = _save(_photo(), "JPEG", quality=90, exif=_exif(orientation=6), icc_profile=icc)
    stripped = strip_metadata(original)
    tags, _, info = _read_back(stripped)
    assert tags == {0x0112: 6} and info.get("icc_profile") == icc
    upright = decode_image(stripped)
    assert upright.size == (64, 96)  # rotated by EXIF, as the original is
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(decode_image(original)))


def test_progressive_jpeg_and_trailing_data_after_the_image():
    original = _save(_photo(), "JPEG", quality=80, progressive=True, exif=_exif())
    stripped = strip_metadata(original + b"APPENDED-SECRET")
    assert b"APPENDED-SECRET" not in stripped and b"SN-0042" not in stripped
    assert _jpeg_scans(stripped) == _jpeg_scans(original)


def test_png_text_chunks_and_exif_removed_pixels_bytes_kept():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_text("Description", "site 4, building B", zip=True)  # zTXt
    info.add_itxt("Comment", "privé", lang="fr")
    original = _save(_photo(), "PNG", pnginfo=info, exif=_exif())
    fields = {f["field"] for f in image_findings(original)}
    assert {"Author", "Description", "Comment", "GPSInfo"} <= fields
    stripped = strip_metadata(original)
    with Image.open(io.BytesIO(stripped)) as im:
        assert im.text == {} and dict(im.getexif()) == {}
    for needle in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"Jane"):
        assert needle not in stripped
    assert _png_chunks(stripped, b"IDAT") == _png_chunks(original, b"IDAT")  # same bytes
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stripped))),
                                  np.asarray(Image.open(io.BytesIO(original))))


@pytest.mark.parametrize("lossless", [False, True])
def test_webp_exif_and_xmp_removed_bitstream_copied(lossless):
    original = _save(_photo(), "WEBP", lossless=lossless, quality=80, exif=_exif(), xmp=XMP)
    assert {"GPSInfo", "XMP"} <= {f["field"] for f in image_findings(original)}
    stripped = strip_metadata(original)
    tags, _, info = _read_back(stripped)
    assert tags == {} and not info.get("xmp") and image_findings(stripped) == []
    assert stripped[12:16] == b"VP8X" and stripped[20] & 0x0C == 0  # EXIF/XMP flags cleared
    assert struct.unpack("<I", stripped[4:8])[0] == len(stripped) - 8
    codec = b"VP8L" if lossless else b"VP8 "
    chunk = lambda d: d[d.index(codec):]  # noqa: E731  (the image chunk to the end)
    assert chunk(stripped) == chunk(original)[:len(chunk(stripped))]
    np.testing.assert_array_equal(np.asarray(decode_image(stripped)),
                                  np.asarray(decode_image(original)))


@pytest.mark.parametrize("compression", ["tiff_lzw", "raw", "jpeg"])
def test_tiff_tags_removed_pixels_equal(compression):
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[0x013B], ifd[0x010E], ifd[0x013C] = "Jane Doe", "patient 12 wound", "ward-4-pc"
    ifd[0x02BC] = XMP  # XMLPacket
    original = _save(_photo(), "TIFF", tiffinfo=ifd,
                     compression=None if compression == "raw" else compression)
    assert {"Artist", "ImageDescription", "HostComputer", "XMP"} <= {
        f["field"] for f in image_findings(original)}
    out = strip_image(original)
    assert out.format == "TIFF" and not out.lossless and out.note
    assert image_findings(out.data) == []
    for needle in (b"Jane Doe", b"wound", b"ward-4", b"xmpmeta"):
        assert needle not in out.data
    np.testing.assert_array_equal(np.asarray(decode_image(out.data)),
                                  np.asarray(decode_image(original)))


def test_multipage_tiff_keeps_every_page():
    pages = [_photo(), _photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    with Image.open(io.BytesIO(strip_metadata(buf.getvalue()))) as im:
        assert im.n_frames == 2
        im.seek(1)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(pages[1]))


def test_damaged_or_unknown_files_are_refused_with_a_reason():
    jpeg = _save(_photo(), "JPEG")
    png = _save(_photo(), "PNG")
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        strip_metadata(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="PNG"):
        strip_metadata(png[:-20])
    with pytest.raises(ImageDecodeError, match="bad checksum"):
        strip_metadata(png[:40] + bytes([png[40] ^ 0xFF]) + png[41:])
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG"):
        strip_metadata(b"GIF89a....")
    bmp = _save(_photo(), "BMP")
    assert strip_metadata(bmp) == bmp


def test_an_exif_block_pillow_cannot_parse_is_flagged_and_removed():
    original = _save(_photo(), "JPEG", exif=_exif())
    at = original.index(b"Exif\x00\x00") + 6
    broken = original[:at] + b"XX" + original[at + 2:]  # no valid TIFF byte order
    assert [f["field"] for f in image_findings(broken)] == ["EXIF"]
    stripped = strip_metadata(broken)
    assert image_findings(stripped) == [] and b"Jane Doe" not in stripped
