"""The labelling page's server: `create_label_app(session, token=...)`, run by
`sightwise label` through `run_label_server`.

Same conventions as `sightwise serve`: loopback by default, security headers, a body limit,
JSON errors ``{"error": {"code", "message"}}`` with a 4xx for anything the client got wrong,
and a bearer token on every /v1 route (the page itself and its static files are open; the
page sends the token it was given in the URL fragment, which never reaches a server log).
Answers are writes, so the token is always required: without --token-file or
$SIGHTWISE_TOKEN a random one is made and printed with the page's URL.
"""

from __future__ import annotations

import io
import logging
import secrets
import signal
import threading
from collections.abc import Callable

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError, SightwiseError
from sightwise.label.pool import PoolError
from sightwise.label.session import LabelSession, SessionError
from sightwise.serve.admission import BodyLimitMiddleware
from sightwise.serve.auth import TokenGate
from sightwise.serve.errors import answer, install_error_handlers
from sightwise.serve.hosts import HostCheck
from sightwise.serve.pages import STATIC_DIR, SecurityHeaders
from sightwise.serve.schemas import ApiError
from sightwise.serve.settings import host_allowlist

log = logging.getLogger("sightwise.label")
MAX_BODY = 64 * 1024  # answers are a few hundred bytes of JSON
DISPLAY_MAX_SIDE = 1600  # large enough for a full-screen look, small enough to send fast


class Who(BaseModel):
    annotator: str = Field(min_length=1, max_length=64)


class Answer(Who):
    id: int = Field(ge=0)
    label: str = Field(min_length=1, max_length=200)


class Skip(Who):
    id: int = Field(ge=0)


def create_label_app(session: LabelSession, *, token: str, host: str = "127.0.0.1",
                     allowed_hosts: tuple[str, ...] = ()) -> FastAPI:
    """The page and its /v1/label API; `host` is the bound address (with `allowed_hosts`
    it decides which Host headers are answered, as in `sightwise serve`)."""
    if not token:
        raise ValueError("the labelling server needs a token (answers are writes)")
    app = FastAPI(title="Sightwise labelling", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.session = session
    _add_error_handlers(app)
    _add_routes(app, session)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY)
    app.add_middleware(TokenGate, token=token, require_for_api=True)
    app.add_middleware(HostCheck, names=host_allowlist(host, allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """`sightwise serve`'s handlers (one error shape, 4xx for client mistakes), plus the
    labelling session's own errors."""
    install_error_handlers(app)

    @app.exception_handler(PoolError)
    async def pool_error(request: Request, exc: PoolError):
        return answer(ApiError(404, "not_in_pool", str(exc)))

    @app.exception_handler(SightwiseError)
    async def session_error(request: Request, exc: SightwiseError):
        code = 422 if isinstance(exc, SessionError) else 503
        return answer(ApiError(code, "rejected" if code == 422 else "unavailable", str(exc)))


def _add_routes(app: FastAPI, s: LabelSession) -> None:
    def run(fn, *args):
        return anyio.to_thread.run_sync(lambda: fn(*args))  # the session lock may wait

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC_DIR / "label.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/label/state")
    async def state(annotator: str = Query(min_length=1, max_length=64)):
        history = await run(s.history, annotator)
        return {"classes": s.classes, "model_version": s.model.version if s.model else None,
                "progress": await run(s.progress), "history": history}

    @app.post("/v1/label/next")
    async def next_item(body: Who):
        item = await run(s.next_item, body.annotator)
        return {"item": item, "progress": await run(s.progress)}

    @app.post("/v1/label/answer")
    async def answer(body: Answer):
        done = await run(s.answer, body.annotator, body.id, body.label)
        return {"answered": done, "progress": await run(s.progress)}

    @app.post("/v1/label/skip")
    async def skip(body: Skip):
        done = await run(s.skip, body.annotator, body.id)
        return {"answered": done, "progress": await run(s.progress)}

    @app.post("/v1/label/undo")
    async def undo(body: Who):
        item = await run(s.undo, body.annotator)
        return {"item": item, "progress": await run(s.progress)}

    @app.get("/v1/label/progress")
    async def progress():
        return await run(s.progress)

    @app.get("/v1/label/image/{item_id}")
    async def image(item_id: int):
        path = s.image_path(item_id)
        try:
            data, media = await anyio.to_thread.run_sync(_display_bytes, path)
        except ImageDecodeError as exc:
            s.mark_broken(item_id, str(exc))
            raise ApiError(422, "broken_image", f"{path.name} cannot be decoded ({exc}); "
                           "it was taken out of the queue") from None
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=600"})


def _display_bytes(path) -> tuple[bytes, str]:
    """The image as the browser is shown it: decoded safely, at most DISPLAY_MAX_SIDE a
    side, PNG when small (exact pixels), JPEG when large (fast to send)."""
    img = decode_image(path)
    img.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    buf = io.BytesIO()
    if img.width * img.height <= 512 * 512:
        img.save(buf, "PNG")
        return buf.getvalue(), "image/png"
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"


def _ignore(signum, frame) -> None:
    """A signal handler that does nothing (see run_label_server)."""


def new_token() -> str:
    return secrets.token_urlsafe(24)


def run_label_server(session: LabelSession, *, host: str = "127.0.0.1", port: int = 8765,
                     token: str | None = None, log_level: str = "warning",
                     echo: Callable[[str], None] = print) -> None:
    """Serve the page until Ctrl-C / SIGTERM. Every answer is already on disk."""
    import uvicorn

    token = token or new_token()
    app = create_label_app(session, token=token, host=host)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    echo(f"labelling page: http://{shown}:{port}/#token={token}")
    echo(f"answers go to {session.store.path} (Ctrl-C to stop; nothing is lost)")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1,
                            server_header=False, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it handled once its graceful shutdown is done; park
    # no-op handlers underneath so the command returns and prints its summary instead.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SightwiseError(f"the labelling server did not start on {host}:{port} (port in use?)")
