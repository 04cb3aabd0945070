"""Reading the images of a request, and refusing the rest with a 4xx before it costs much.

- Body: `multipart/form-data` with one or more parts named `file` (the web page, curl -F),
  or the image file itself as the whole body (`image/*`, `application/octet-stream` or no
  Content-Type: curl --data-binary). Any other Content-Type is a 415.
- Multipart is parsed as it streams with python-multipart, in memory (uploads never touch
  the disk), with a cap on parts so a 10 000-part body is refused at part `max_parts + 1`.
- Images: the header is read first (`probe`): format allowlist (415) and pixel limit
  (413) before a pixel is decoded, because a small PNG can expand to gigabytes; then
  `decode_image`. Anything Pillow cannot decode is a 422, whatever its plugin raises.
- DICOM (#22) is recognised by its magic (`DICM` after the 128-byte preamble; the file
  name is not trusted), sized from its header by pydicom, and decoded by the same
  `decode_image` (one frame, windowed to 8 bits: sightwise.data.dicom). Without pydicom
  (the `dicom` extra) it is a 415 naming the install command.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from sightwise.data.decode import ALLOWED_FORMATS, decode_image
from sightwise.data.dicom import INSTALL_HINT as DICOM_INSTALL_HINT
from sightwise.data.dicom import header_size, looks_like_dicom
from sightwise.errors import ImageDecodeError
from sightwise.serve.schemas import ApiError

RAW_TYPES = (b"application/octet-stream", b"")


@dataclass
class Upload:
    filename: str | None
    data: bytes


class _Parts:
    """python-multipart callbacks collecting `file` parts in memory, with caps."""

    def __init__(self, max_images: int, max_parts: int):
        self.max_images, self.max_parts = max_images, max_parts
        self.parts = 0
        self.uploads: list[Upload] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._chunks: list[bytes] | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data,
                "on_part_end": self.part_end, "on_end": self.end}

    def begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise ApiError(413, "too_many_parts", f"more than {self.max_parts} multipart parts")
        self._headers, self._chunks = {}, None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or params.get(b"name") != b"file":
            return  # other fields are counted as parts but ignored
        if len(self.uploads) >= self.max_images:
            raise ApiError(413, "too_many_images",
                           f"more than {self.max_images} image(s) in one request")
        self._chunks = []
        name = params.get(b"filename")
        self.uploads.append(Upload(name.decode("utf-8", "replace")[:200] if name else None, b""))

    def data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def part_end(self) -> None:
        if self._chunks is not None:
            self.uploads[-1].data = b"".join(self._chunks)
            self._chunks = None

    def end(self) -> None:
        self.ended = True


async def read_uploads(content_type: str | None, body: AsyncIterator[bytes], *,
                       max_images: int, max_parts: int) -> list[Upload]:
    """The images of a request body, in order (at least one)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype == b"multipart/form-data":
        return await _read_multipart(params.get(b"boundary"), body, max_images, max_parts)
    if ctype.startswith(b"image/") or ctype in RAW_TYPES:
        data = bytearray()
        async for chunk in body:  # the body-limit middleware bounds the total
            data += chunk
        if not data:
            raise ApiError(400, "no_image", "empty request body: send an image")
        return [Upload(None, bytes(data))]
    raise ApiError(415, "unsupported_media_type", "send images as multipart/form-data in the "
                   "field 'file', or one image as the request body")


async def _read_multipart(boundary: bytes | None, body: AsyncIterator[bytes], max_images: int,
                          max_parts: int) -> list[Upload]:
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart body without a boundary")
    parts = _Parts(max_images, max_parts)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({exc})") from None
    if not parts.ended:
        raise ApiError(400, "bad_multipart", "multipart body ends before its closing boundary")
    if not parts.uploads:
        raise ApiError(400, "no_image", "no image in the field 'file'")
    return parts.uploads


def probe(data: bytes, max_pixels: int) -> int:
    """Pixels of the image in `data`, read from its header; ApiError 415/413/422 if it
    cannot be accepted. Decodes nothing."""
    if not data:
        raise ApiError(422, "invalid_image", "empty file")
    if looks_like_dicom(data):
        w, h = _dicom_size(data)
        return _check_size(w, h, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, (w, h) = header.format, header.size
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_media_type",
                       f"not an image in an allowed format ({', '.join(sorted(ALLOWED_FORMATS))})"
                       ) from None
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", "image has too many pixels") from None
    except Exception as exc:  # Pillow's header parsers raise many types on hostile input
        raise ApiError(422, "invalid_image", f"unreadable image header ({type(exc).__name__})"
                       ) from None
    if fmt not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_media_type", f"format {fmt} is not allowed")
    return _check_size(w, h, max_pixels)


def _dicom_size(data: bytes) -> tuple[int, int]:
    """(columns, rows) of a DICOM upload from its header, or ApiError 415/422."""
    try:
        return header_size(data)
    except ImageDecodeError as exc:
        if str(exc) == DICOM_INSTALL_HINT:
            raise ApiError(415, "unsupported_media_type", f"a DICOM file; {exc}") from None
        raise ApiError(422, "invalid_image", f"DICOM: {exc}") from None
    except Exception as exc:  # pydicom's parser on a hostile header
        raise ApiError(422, "invalid_image", f"unreadable DICOM header ({type(exc).__name__})"
                       ) from None


def _check_size(w: int, h: int, max_pixels: int) -> int:
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"{w}x{h} pixels exceeds the limit of {max_pixels:,}")
    if w * h == 0:
        raise ApiError(422, "invalid_image", "image has zero width or height")
    return w * h


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """RGB image of an upload that passed `probe`, or ApiError 413/422."""
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(422, "invalid_image", str(exc)) from None
    except MemoryError:
        raise ApiError(413, "too_many_pixels", "image too large to decode") from None
    except Exception as exc:  # a plugin bug on a hostile file is still the file's fault
        raise ApiError(422, "invalid_image", f"undecodable image ({type(exc).__name__})"
                       ) from None


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """`probe` then `decode`: an RGB image or ApiError 415 (format), 413 (pixels), 422."""
    probe(data, max_pixels)
    return decode(data, max_pixels)
