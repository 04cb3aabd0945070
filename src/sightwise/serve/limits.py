"""What the server accepts, and how it refuses the rest with a 4xx before it costs much.

- Body size: refused from Content-Length before a byte is read, and counted again while the
  body streams (a chunked or lying client cannot get past it) -> 413.
- Multipart: parsed as it streams with python-multipart, in memory (uploads never touch the
  disk), with a cap on parts so a 10 000-part body is refused at part `max_parts + 1`.
- Images: format allowlist (415) and pixel limit (413) read from the header before
  decoding (a small PNG can expand to gigabytes), then `decode_image`; anything Pillow
  cannot decode is a 422, whatever exception its plugin raises.
- Model references given on the command line: NAME@ALIAS or NAME/VERSION only, so a
  reference can never name a path.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from sightwise.data.decode import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, decode_image
from sightwise.errors import ImageDecodeError
from sightwise.serve.schemas import ApiError

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; the defaults suit a laptop serving a small team."""

    max_body_bytes: int = 16 * MIB
    max_images: int = 16            # images per request
    max_parts: int = 32             # multipart parts of any kind per request
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 64             # requests admitted at once; more get 503 at once
    request_timeout_s: float = 30.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_parts", "max_pixels", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_parts < self.max_images:
            raise ValueError("max_parts must be at least max_images")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")


def too_large(message: str) -> ApiError:
    return ApiError(413, "payload_too_large", message)


class BodyLimitMiddleware:
    """ASGI middleware: 413 for bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared == -1:
            return await _send_error(send, ApiError(400, "bad_request", "invalid Content-Length"))
        if declared is not None and declared > self.max_bytes:
            return await _send_error(send, too_large(
                f"body of {declared:,} bytes exceeds the limit of {self.max_bytes:,}"))
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the endpoint's body read, so the app's ApiError handler
                    # answers it; the rest of the body is never read.
                    raise too_large(f"body exceeds the limit of {self.max_bytes:,} bytes")
            return message

        return await self.app(scope, counted_receive, send)


def _content_length(scope) -> int | None:
    """The declared length, None if absent, -1 if malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


@dataclass
class Gate:
    """Admission state shared by the middleware below and the app (readiness, shutdown)."""

    max_in_flight: int
    retry_after_s: int = 1
    paths: frozenset[str] = frozenset({"/v1/predict", "/v1/explain"})
    in_flight: int = 0
    closing: bool = False


class AdmissionMiddleware:
    """At most `gate.max_in_flight` inference requests inside the app; the rest are answered
    503 + Retry-After before a byte of their body is read. Checked here, ahead of routing,
    because under overload this answer is most of the server's work: the cheaper it is,
    the faster excess load is shed and the less it slows the admitted requests."""

    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate
        self._busy = _error_bytes("busy", "too many requests in flight; retry shortly")
        self._closing = _error_bytes("shutting_down", "the server is shutting down")

    async def __call__(self, scope, receive, send):
        gate = self.gate
        if scope["type"] != "http" or scope["path"] not in gate.paths:
            return await self.app(scope, receive, send)
        if gate.closing or gate.in_flight >= gate.max_in_flight:
            body = self._closing if gate.closing else self._busy
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(gate.retry_after_s).encode())]})
            return await send({"type": "http.response.body", "body": body})
        gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.in_flight -= 1


def _error_bytes(code: str, message: str) -> bytes:
    return json.dumps(ApiError(503, code, message).body()).encode()


async def _send_error(send, err: ApiError) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
    await response({"type": "http"}, None, send)


@dataclass
class Upload:
    filename: str | None
    data: bytes


class _Parts:
    """python-multipart callbacks collecting `file` parts in memory, with caps."""

    def __init__(self, limits: Limits):
        self.limits = limits
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
        if self.parts > self.limits.max_parts:
            raise ApiError(413, "too_many_parts",
                           f"more than {self.limits.max_parts} multipart parts")
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
        if len(self.uploads) >= self.limits.max_images:
            raise ApiError(413, "too_many_images",
                           f"more than {self.limits.max_images} images in one request")
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


async def read_uploads(content_type: str | None, body: AsyncIterator[bytes],
                       limits: Limits) -> list[Upload]:
    """The `file` parts of a multipart/form-data body, in order (at least one)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       "send images as multipart/form-data in the field 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart body without a boundary")
    parts = _Parts(limits)
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


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """RGB image, or ApiError 415 (format), 413 (pixels) or 422 (undecodable)."""
    if not data:
        raise ApiError(422, "invalid_image", "empty file")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
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
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"{w}x{h} pixels exceeds the limit of {max_pixels:,}")
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(422, "invalid_image", str(exc)) from None
    except MemoryError:
        raise ApiError(413, "too_many_pixels", "image too large to decode") from None
    except Exception as exc:  # a plugin bug on a hostile file is still the file's fault
        raise ApiError(422, "invalid_image", f"undecodable image ({type(exc).__name__})"
                       ) from None


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_REF = re.compile(rf"(?P<name>{_NAME})(?:@(?P<alias>[A-Za-z][A-Za-z0-9_-]{{0,63}})"
                  rf"|/(?P<version>[1-9][0-9]{{0,8}}))")


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """NAME@ALIAS or NAME/VERSION -> (name, alias, version); anything else is a ValueError.

    >>> parse_model_ref("parts-qc@production")
    ('parts-qc', 'production', None)
    >>> parse_model_ref("parts-qc/3")
    ('parts-qc', None, 3)
    >>> parse_model_ref("../etc@production")
    Traceback (most recent call last):
    ...
    ValueError: invalid model reference '../etc@production': use NAME@ALIAS or NAME/VERSION \
with NAME in [A-Za-z0-9._-] (starting with a letter or digit)
    """
    m = _REF.fullmatch(ref) if isinstance(ref, str) else None
    if m is None or ".." in m["name"]:
        raise ValueError(f"invalid model reference {ref!r}: use NAME@ALIAS or NAME/VERSION "
                         "with NAME in [A-Za-z0-9._-] (starting with a letter or digit)")
    version = int(m["version"]) if m["version"] else None
    return m["name"], m["alias"], version
