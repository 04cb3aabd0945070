"""Every failure answered in one shape: {"error": {"code": ..., "message": ...}}.

Expected failures are `ApiError`s with their 4xx/503 status. FastAPI's own (validation,
404, 405) are mapped to the same shape; anything unexpected is logged with its traceback
and answered 500 without details (the message of an arbitrary exception can name files).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sightwise.serve.schemas import ApiError

log = logging.getLogger("sightwise.serve")
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type"}


def answer(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return answer(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(ApiError(422, "invalid_parameter", f"{where}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        err = ApiError(exc.status_code, code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return answer(err)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):
        # The client hung up mid-upload: nobody reads this answer, and it is not an error
        # of the server's (so no traceback in the log).
        return answer(ApiError(400, "client_disconnected", "the connection closed before "
                               "the request body arrived"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)  # path only: no upload bytes
        return answer(ApiError(500, "internal", "internal server error"))
