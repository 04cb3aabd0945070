"""ASGI middleware that refuses work before it costs anything: too many requests in flight
(503 + Retry-After, before a byte of the body is read) and bodies over the size limit
(413, declared or streamed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from sightwise.serve.schemas import ApiError


@dataclass
class Gate:
    """Admission state shared by the middleware below and the app (readiness, shutdown).
    `paths` are the routes that do inference; each router adds its own."""

    max_in_flight: int
    retry_after_s: int = 1
    paths: set[str] = field(default_factory=set)
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


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared == -1:
            return await send_error(send, ApiError(400, "bad_request", "invalid Content-Length"))
        if declared is not None and declared > self.max_bytes:
            return await send_error(send, ApiError(413, "payload_too_large", f"body of "
                                    f"{declared:,} bytes exceeds the limit of {self.max_bytes:,}"))
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the endpoint's body read, so the app's ApiError handler
                    # answers it; the rest of the body is never read.
                    raise ApiError(413, "payload_too_large",
                                   f"body exceeds the limit of {self.max_bytes:,} bytes")
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


async def send_error(send, err: ApiError) -> None:
    """Answer `err` from middleware, outside the app's exception handlers."""
    response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
    await response({"type": "http"}, None, send)
