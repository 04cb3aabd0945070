"""DICOM files as images: one frame of a .dcm file -> an 8-bit RGB Pillow image.

pydicom is an optional extra (`pip install 'sightwise[dicom]'`), imported only when a DICOM
file is met, so the base install and the torch-free run side need nothing new.

How the pixels become 8-bit, and why:
- monochrome images go through the Modality LUT (Rescale Slope/Intercept, e.g. CT values to
  Hounsfield units) and then the file's own window (Window Center/Width, PS3.3 C.11.2.1.2),
  because that is how the acquiring site meant the image to be seen. Files without a window
  get a robust one, the 0.5th to 99.5th percentile, so a few padding or saturated pixels
  do not flatten the contrast of everything else;
- MONOCHROME1 means "low values are bright" (e.g. many X-ray detectors): inverted, so every
  image the model sees has bright = high signal;
- RGB and YBR are handed back as RGB (pydicom converts YBR); more than 8 bits per sample are
  scaled from the stored bit depth; PALETTE COLOR goes through its palette;
- a multi-frame file gives one frame: `frame` (0-based), or by default the middle frame, the
  one most likely to show the anatomy of a volume (the first slice of a CT is often empty).

Compressed transfer syntaxes are decoded by whichever pydicom plugin is installed: JPEG
Baseline by Pillow, RLE by pydicom itself (faster with pylibjpeg-rle), JPEG 2000 by
pylibjpeg-openjpeg, JPEG-LS and JPEG Lossless by python-gdcm (all in the `dicom` extra).
12-bit JPEG Extended needs pylibjpeg-libjpeg (GPL-3.0, so not in the extra).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.errors import ImageDecodeError

DICOM_SUFFIXES = frozenset({".dcm"})
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
INSTALL_HINT = "DICOM support is not installed: pip install 'sightwise[dicom]'"


def looks_like_dicom(data: bytes, name: str | Path | None = None) -> bool:
    """True for the DICOM Part 10 magic (`DICM` after a 128-byte preamble) or a .dcm name.

    >>> looks_like_dicom(bytes(128) + b"DICM" + bytes(10)), looks_like_dicom(b"\\x89PNG")
    (True, False)
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return name is not None and Path(name).suffix.lower() in DICOM_SUFFIXES


def read_dataset(source: str | Path | bytes, *, name: str | Path | None = None,
                 stop_before_pixels: bool = False):
    """A pydicom Dataset, or ImageDecodeError saying why the file is not usable DICOM.

    A file without the 128-byte preamble and `DICM` magic (older, non-Part 10 files) is read
    only when its name (`name`, or the path) ends in .dcm, the user's word that it is DICOM.
    """
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    if isinstance(source, bytes):
        data = source
    else:
        name, data = name or source, _read(source)
    force = not looks_like_dicom(data) and looks_like_dicom(b"", name)
    try:
        with warnings.catch_warnings():  # quirks pydicom reads past are not the user's news
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=force,
                                 stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"not a valid DICOM file ({exc})") from None
    except Exception as exc:  # pydicom's parser raises many types on damaged files
        raise ImageDecodeError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    if not any(t.group in (0x0008, 0x0010, 0x0020, 0x0028) for t in ds.keys()):
        # pydicom turns any bytes after a DICM magic (or any forced read) into a few junk
        # elements: a real file has identifying, study or image attributes
        raise ImageDecodeError("not a valid DICOM file (no DICOM attributes found)")
    return ds


def header_size(source: str | Path | bytes, *, name: str | Path | None = None) -> tuple[int, int]:
    """(width, height) from the header alone (pixel data not read): for size statistics."""
    ds = read_dataset(source, name=name, stop_before_pixels=True)
    return int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)


def decode_dicom(source: str | Path | bytes, *, name: str | Path | None = None,
                 frame: int | None = None, max_pixels: int = 40_000_000) -> Image.Image:
    """One frame of a DICOM file as an 8-bit RGB image (see the module notes).

    Raises `ImageDecodeError` for a file without pixel data, a truncated or damaged file,
    a compression no installed decoder reads, too many pixels, or a frame out of range.
    """
    ds = read_dataset(source, name=name)
    return Image.fromarray(dataset_to_uint8(ds, frame=frame, max_pixels=max_pixels)).convert("RGB")


def dataset_to_uint8(ds, *, frame: int | None = None, max_pixels: int = 40_000_000) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 pixels of one frame of a pydicom Dataset."""
    check_complete(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = f" (a {ds.Modality} object, not an image)" if ds.get("Modality") else ""
        raise ImageDecodeError(f"DICOM file has no pixel data{kind}")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows == 0 or cols == 0:
        raise ImageDecodeError("DICOM image has zero rows or columns")
    if rows * cols > max_pixels:
        raise ImageDecodeError(f"{cols}x{rows} pixels exceeds the limit of {max_pixels:,} "
                               "(possible decompression bomb)")
    index = _frame_index(ds, frame)
    arr = _decode_frame(ds, index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _palette_to_uint8(arr, ds)
    if arr.ndim == 3:  # RGB, or YBR already converted to RGB by pydicom
        return _scale_bits(arr, int(ds.get("BitsStored") or 8))
    return _monochrome_to_uint8(arr, ds, invert=photometric == "MONOCHROME1")


def check_complete(ds) -> None:
    """ImageDecodeError for a file cut short. pydicom reads a truncated file without a word:
    it just stops, so an image may arrive without its pixel data, or with fewer bytes."""
    from pydicom.uid import UID

    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        if sop and "Image Storage" in UID(sop).name:
            raise ImageDecodeError(f"truncated DICOM file: a {UID(sop).name} object without "
                                   "its pixel data")
        return
    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.TransferSyntaxUID) if meta and "TransferSyntaxUID" in meta else None
    if syntax is None or syntax.is_encapsulated:
        return  # fragments: a cut shows when decoding
    try:
        from pydicom.pixels.utils import get_expected_length

        expected = int(get_expected_length(ds))
    except Exception:  # attributes missing or odd: decoding reports it better
        return
    got = len(ds.PixelData or b"")
    if got < expected:
        raise ImageDecodeError(f"truncated DICOM pixel data ({got:,} of {expected:,} bytes)")


def number_of_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        raise ImageDecodeError(f"invalid Number of Frames {ds.get('NumberOfFrames')!r}") from None


def _frame_index(ds, frame: int | None) -> int | None:
    n = number_of_frames(ds)
    if frame is None:
        return n // 2 if n > 1 else None
    if not 0 <= frame < n:
        raise ImageDecodeError(f"frame {frame} out of range: the file has {n} frame(s)")
    return frame if n > 1 else None


def _decode_frame(ds, index: int | None) -> np.ndarray:
    from pydicom.uid import UID

    try:
        with warnings.catch_warnings():  # pydicom warns about fixable quirks (padding, VRs)
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index)  # decode only the frame asked for
            return np.asarray(ds.pixel_array)
    except MemoryError:
        raise ImageDecodeError("DICOM image too large to decode") from None
    except Exception as exc:
        meta = getattr(ds, "file_meta", None)
        syntax = UID(meta.TransferSyntaxUID) if meta and "TransferSyntaxUID" in meta else None
        name = syntax.name if syntax else "unknown transfer syntax"
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        if syntax == JPEG_EXTENDED and int(ds.get("BitsStored") or 8) > 8:
            reason += "; 12-bit JPEG needs pylibjpeg-libjpeg (GPL-3.0, not in the extra)"
        elif "missing required dependencies" in reason or "no pixel data decoders" in reason:
            reason = "no installed decoder reads it: pip install 'sightwise[dicom]'"
        raise ImageDecodeError(f"corrupt, truncated or undecodable DICOM pixel data "
                               f"({name}: {reason})") from None


def _monochrome_to_uint8(arr: np.ndarray, ds, *, invert: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    window = _file_window(ds)
    if window is not None:
        out = _linear_window(values, *window)
    else:
        lo, hi = np.percentile(values, [0.5, 99.5])
        out = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    u8 = np.round(out * 255.0).astype(np.uint8)
    return 255 - u8 if invert else u8


def _file_window(ds) -> tuple[float, float] | None:
    """(center, width) from the file, the first of several; None when absent or unusable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if np.isfinite(c) and np.isfinite(w) and w >= 1 else None


def _is_multi(value) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the LINEAR VOI function, mapped to [0, 1]:
    below c - 0.5 - (w-1)/2 -> 0, above c - 0.5 + (w-1)/2 -> 1, linear between."""
    if width <= 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(2 ** min(max(bits, 1), 32) - 1)
    return np.clip(np.round(arr.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)


def _palette_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(arr, ds))
    except Exception as exc:
        raise ImageDecodeError(f"unusable DICOM palette ({exc})") from None
    bits = 8 if rgb.dtype == np.uint8 else 16
    return _scale_bits(rgb, bits)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImageDecodeError(INSTALL_HINT) from None
    return pydicom


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror})") from None
