"""Remove metadata from image files, without re-encoding pixels where the format allows.

- JPEG (and MPO): the file is a list of marker segments; we copy the ones that describe the
  pixels (quantisation and Huffman tables, frame and scan headers, the entropy-coded data,
  JFIF, the Adobe colour-transform flag, ICC colour profile) byte for byte and drop EXIF,
  XMP, IPTC/Photoshop, comments and vendor APPn blocks. The compressed pixels are the same
  bytes, so nothing is lost to a second JPEG encode. Anything after the first image's
  end marker (an MPO's other pictures, appended data) is dropped.
- PNG: copy the chunks that draw the image (IHDR, PLTE, IDAT, transparency, colour space,
  animation), drop text, eXIf and tIME chunks and unknown ancillary ones.
- WebP: copy the RIFF chunks that draw the image, drop EXIF and XMP and clear their flags.
- TIFF: metadata lives in the same directory as the strip offsets, so the file is written
  again by Pillow from its pixels with a lossless compression: the pixel values are
  identical (a JPEG-compressed TIFF is re-stored as LZW, losing nothing more).
- BMP carries no metadata: unchanged.

Orientation survives as a minimal EXIF with that one tag, because dropping it would turn
phone photos sideways. Colour profiles stay: they change how the pixels look, not who.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, ImageSequence

from sightwise.errors import ImageDecodeError

ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB",
                      b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"cICP", b"mDCV", b"cLLI", b"acTL",
                      b"fcTL", b"fdAT"})
WEBP_KEEP = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
LOSSLESS_TIFF = frozenset({"raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"})
_JPEG_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")  # not stuffing, not RSTn


@dataclass(frozen=True)
class Stripped:
    data: bytes
    format: str
    lossless: bool     # True: the compressed pixel bytes are copied, not re-encoded
    note: str = ""


def strip_metadata(image_bytes: bytes) -> bytes:
    """The same image without EXIF/GPS/XMP/IPTC/comments (see the module notes).

    For the server's kept uploads. Raises ImageDecodeError for a damaged or unknown file.
    """
    return strip_image(image_bytes).data


def strip_image(data: bytes) -> Stripped:
    """Dispatch on the file's magic bytes, not its name."""
    if data[:3] == b"\xff\xd8\xff":
        return Stripped(_strip_jpeg(data), "JPEG", True)
    if data[:8] == PNG_SIGNATURE:
        return Stripped(_strip_png(data), "PNG", True)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Stripped(_strip_webp(data), "WEBP", True)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        out, note = _rewrite_tiff(data)
        return Stripped(out, "TIFF", False, note)
    if data[:2] == b"BM":
        return Stripped(data, "BMP", True, "no metadata in BMP")
    raise ImageDecodeError("not a JPEG, PNG, WebP, TIFF or BMP file")


def orientation_of(data: bytes) -> int:
    """The EXIF Orientation (1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def minimal_exif(orientation: int) -> bytes:
    """EXIF holding only Orientation, with the "Exif\\0\\0" header JPEG's APP1 needs."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


# -- JPEG ----------------------------------------------------------------------------------


def _strip_jpeg(data: bytes) -> bytes:
    out = [b"\xff\xd8"]
    pos, n = 2, len(data)
    while True:
        m = _JPEG_NEXT_MARKER.match(data, pos)
        if m is None:
            raise ImageDecodeError(f"damaged JPEG: no marker at byte {pos}")
        marker, pos = m.group(1)[0], m.end()
        if marker == 0xD9:  # EOI: the end of the first image; drop anything after it
            out.append(b"\xff\xd9")
            return _with_orientation(out, orientation_of(data))
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            out.append(bytes((0xFF, marker)))
            continue
        if pos + 2 > n:
            raise ImageDecodeError("truncated JPEG (segment header cut off)")
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > n:
            raise ImageDecodeError("truncated JPEG (segment runs past the end of the file)")
        segment = data[pos - 2:pos + length]
        pos += length
        if _keep_jpeg_segment(marker, data[pos - length + 2:pos]):
            out.append(segment)
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            nxt = _JPEG_NEXT_MARKER.search(data, pos)
            if nxt is None:
                raise ImageDecodeError("truncated JPEG (no end-of-image marker)")
            out.append(data[pos:nxt.start()])
            pos = nxt.start()


def _with_orientation(segments: list[bytes], orientation: int) -> bytes:
    if orientation != 1:  # APP1 right after SOI, or after JFIF's APP0 (which must be first)
        payload = minimal_exif(orientation)
        at = 2 if segments[1].startswith(b"\xff\xe0") else 1
        segments.insert(at, b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    return b"".join(segments)


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xE0:
        return payload.startswith(b"JFIF\x00")  # JFXX thumbnails are dropped
    if marker == 0xE2:
        return payload.startswith(b"ICC_PROFILE\x00")  # not FPXR, not MPF
    if marker == 0xEE:
        return payload.startswith(b"Adobe")  # colour transform: needed to decode right
    if 0xE1 <= marker <= 0xEF or marker == 0xFE:
        return False  # EXIF, XMP, IPTC/Photoshop, vendor blocks, comments
    return True


# -- PNG -----------------------------------------------------------------------------------


def _strip_png(data: bytes) -> bytes:
    out = [PNG_SIGNATURE]
    orientation = orientation_of(data)
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > n:
            raise ImageDecodeError(f"truncated PNG (chunk {ctype!r} runs past the end)")
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(ctype + body) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ImageDecodeError(f"damaged PNG (bad checksum in chunk {ctype!r})")
        critical = not (ctype[0] & 0x20)  # lower-case first letter: ancillary
        if ctype == b"IDAT" and orientation != 1:  # eXIf goes before the image data
            out.append(_png_chunk(b"eXIf", minimal_exif(orientation)[6:]))
            orientation = 1
        if ctype in PNG_KEEP or critical:
            out.append(data[pos:end])
        if ctype == b"IEND":
            return b"".join(out)
        pos = end
    raise ImageDecodeError("truncated PNG (no IEND chunk)")


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


# -- WebP ----------------------------------------------------------------------------------


def _strip_webp(data: bytes) -> bytes:
    size = struct.unpack("<I", data[4:8])[0]
    if size + 8 > len(data):
        raise ImageDecodeError("truncated WebP (RIFF size past the end of the file)")
    orientation = orientation_of(data)
    chunks, pos, end = [], 12, size + 8
    while pos + 8 <= end:
        fourcc, length = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        stop = pos + 8 + length + (length & 1)
        if pos + 8 + length > end:
            raise ImageDecodeError(f"truncated WebP (chunk {fourcc!r} runs past the end)")
        if fourcc in WEBP_KEEP:
            chunks.append([fourcc, bytearray(data[pos + 8:pos + 8 + length])])
        pos = stop
    if chunks and chunks[0][0] == b"VP8X":
        flags = chunks[0][1]
        flags[0] &= ~0x0C & 0xFF  # clear the EXIF (0x08) and XMP (0x04) flags
        if orientation != 1:
            flags[0] |= 0x08
            chunks.append([b"EXIF", bytearray(minimal_exif(orientation)[6:])])
    body = b"".join(f + struct.pack("<I", len(c)) + bytes(c) + (b"\x00" if len(c) & 1 else b"")
                    for f, c in chunks)
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


# -- TIFF ----------------------------------------------------------------------------------


def _rewrite_tiff(data: bytes) -> tuple[bytes, str]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            compression = im.info.get("compression", "raw")
            keep = compression if compression in LOSSLESS_TIFF else "tiff_lzw"
            orientation = int(im.getexif().get(ORIENTATION, 1))
            frames = [_bare_copy(f) for f in ImageSequence.Iterator(im)]
    except Exception as exc:
        raise ImageDecodeError(f"unreadable TIFF ({exc})") from None
    out = io.BytesIO()
    extra = {}
    # Pillow turns a single-page TIFF upright on load (and drops the tag), so its pixels are
    # written upright; a multi-page file is not turned, so it keeps its Orientation tag.
    if 1 < orientation <= 8 and len(frames) > 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        extra["exif"] = exif
    frames[0].save(out, "TIFF", compression=None if keep == "raw" else keep,
                   save_all=len(frames) > 1, append_images=frames[1:], **extra)
    note = ("re-written by Pillow, pixel values identical" if keep == compression else
            f"{compression} TIFF re-stored as LZW (no further loss)")
    return out.getvalue(), note


def _bare_copy(frame: Image.Image) -> Image.Image:
    """The pixels with only what renders them (colour profile, resolution): no tags."""
    frame.load()
    bare = frame.copy()
    bare.info = {k: frame.info[k] for k in ("icc_profile", "dpi") if k in frame.info}
    return bare
