"""Safe image decoding: allowlisted formats, a pixel limit, EXIF orientation, RGB out.

Torch-free on purpose: the trainer's cache and `sightwise.runtime` (server, edge) decode
through this one function, so both see the same pixels.

Why each check exists:
- a format allowlist, because Pillow also opens formats (EPS via Ghostscript, ICNS, ...) that
  an upload should never reach;
- a pixel limit read from the header *before* decoding, because a 30000 x 30000 PNG is a few
  KB on disk and gigabytes in memory (a decompression bomb);
- `exif_transpose`, because phone photos store rotation in EXIF and a model trained on
  unrotated pixels sees sideways images.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sightwise.data.dicom import decode_dicom, looks_like_dicom
from sightwise.errors import ImageDecodeError

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"})
# 40 megapixels: above any camera or scanner image a user trains on, far below a bomb.
DEFAULT_MAX_PIXELS = 40_000_000
# 512 MiB: an uncompressed 40 MP 16-bit RGB TIFF is 240 MB; nothing larger is an image here.
MAX_FILE_BYTES = 512 << 20
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm"})


def decode_image(
    source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) into an RGB Pillow image.

    Raises `ImageDecodeError` with a short reason for anything unusable. DICOM files (the
    `DICM` magic, or a .dcm name) are decoded by `sightwise.data.dicom` (pydicom).

    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 6), np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue()).size, decode_image(buf.getvalue()).mode
    ((6, 4), 'RGB')
    >>> decode_image(b"hello")
    Traceback (most recent call last):
    ...
    sightwise.errors.ImageDecodeError: not an image (unrecognised format)
    """
    data = _read_bytes(source)
    if not data:
        raise ImageDecodeError("empty file")
    name = None if isinstance(source, bytes | bytearray | memoryview) else source
    if looks_like_dicom(data, name):  # DICM magic or a .dcm name: pydicom, not Pillow
        return decode_dicom(data, name=name, max_pixels=max_pixels)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own check fires at open for > 2x its limit; report it like ours.
        raise ImageDecodeError(f"{exc} (possible decompression bomb)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's header parsers raise these
        raise ImageDecodeError(f"unreadable image header ({exc})") from None
    with img:
        if img.format not in ALLOWED_FORMATS:
            raise ImageDecodeError(f"format {img.format} not allowed")
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"{width}x{height} pixels exceeds the limit of {max_pixels:,} "
                "(possible decompression bomb)"
            )
        if width == 0 or height == 0:
            raise ImageDecodeError("image has zero width or height")
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(f"decompression bomb ({exc})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            # Truncated JPEGs raise OSError("image file is truncated ...") here.
            raise ImageDecodeError(f"corrupt or truncated image data ({exc})") from None


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    try:
        return read_regular_file(source)
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror or exc})") from None


def read_regular_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Devices (/dev/zero never ends),
    FIFOs (block until a writer comes) and sockets are refused before a byte is read:
    the file is opened non-blocking and checked with fstat on the open descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file (a device, FIFO or socket)")
        if st.st_size > max_bytes:
            raise OSError(f"file of {st.st_size:,} bytes exceeds the limit of {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise OSError(f"file grew past the limit of {max_bytes:,} bytes while read")
        return data
    finally:
        os.close(fd)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16/32-bit integer images are scaled from their type's full range (65535 for 16-bit),
    not min-max stretched, so the same intensity means the same pixel in every image.
    Transparent pixels are composited on white, the usual product-photo background.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # A strip of rows at a time: a 40 MP image never exists as one float64 array.
        if mode == "F":
            peak = np.max([s.max(initial=0) for s in _strips(img)] or [0.0])
            unit = bool(peak <= 1.0)  # float images: [0,1] (NaN anywhere: not [0,1])
            top = 255.0
        else:
            unit, top = False, 65535.0  # 16-bit (and 32-bit integer) images: the 16-bit range
        out = np.empty((img.height, img.width), np.uint8)
        row = 0
        for strip in _strips(img):
            out[row:row + len(strip)] = _scale_to_u8(strip * 255.0 if unit else strip, top)
            row += len(strip)
        return Image.fromarray(out, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An in-memory array (H,W), (H,W,1), (H,W,3) or (H,W,4), any integer dtype, as RGB."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            top = 65535.0
        elif np.issubdtype(arr.dtype, np.floating):
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        else:
            top = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        arr = _scale_to_u8(arr, top)
    return to_rgb(Image.fromarray(arr))


STRIP_PIXELS = 1 << 20  # pixels converted at once: bounds the temporaries


def _strips(img: Image.Image):
    """The image's pixels as numpy arrays of a few rows each, top to bottom."""
    rows = max(1, STRIP_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        yield np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))


def _scale_to_u8(arr: np.ndarray, top: float) -> np.ndarray:
    """uint8 of clip(arr / top * 255 + 0.5, 0, 255), computed in float64.

    Integer input goes through a table of that same formula over every value 0..top
    (exactly equal, with no float temporaries: a 16-bit image at the pixel limit used to
    take seconds and over half a gigabyte here); float input is converted in strips.
    """
    arr = np.asarray(arr)
    out = np.empty(arr.shape, np.uint8)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    table = _u8_table(int(top)) if arr.dtype.kind in "ui" and float(top).is_integer() \
        and 1 <= top <= 65535 else None
    for i in range(0, flat_in.size, STRIP_PIXELS):
        part = flat_in[i:i + STRIP_PIXELS]
        if table is not None:  # values outside 0..top saturate, as the formula's clip does
            inside = part.dtype == np.uint16 and top == 65535
            flat_out[i:i + STRIP_PIXELS] = table[part if inside else
                                                 np.clip(part.astype(np.int64), 0, int(top))]
        else:
            flat_out[i:i + STRIP_PIXELS] = _scale_formula(part, top)
    return out


def _scale_formula(arr: np.ndarray, top: float) -> np.ndarray:
    return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _u8_table(top: int) -> np.ndarray:
    return _scale_formula(np.arange(top + 1, dtype=np.int64), float(top))


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
