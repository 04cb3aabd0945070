"""The HTTP server: `create_app(...)` wires the parts (starlette-style constructor wiring),
`serve_main(...)` runs it with uvicorn for `sightwise serve`.

Request path of POST /v1/predict, outermost first: metrics -> security headers -> token
gate -> admission (503 at once when `max_queue` requests are already in flight) -> body
limit -> request deadline -> streamed multipart parse -> decode + resize in a thread pool
(bounded, so decoded pixels in memory are bounded) -> the batcher (one ONNX batch for
requests arriving within the window) -> JSON naming the model version that computed it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from sightwise.data.decode import DEFAULT_MAX_PIXELS
from sightwise.errors import BundleError, SightwiseError
from sightwise.heatmap import overlay_cam
from sightwise.serve.auth import TOKEN_ENV, TokenGate, load_token
from sightwise.serve.batching import Batcher, BatcherClosed, QueueFull
from sightwise.serve.limits import (
    MIB,
    AdmissionMiddleware,
    BodyLimitMiddleware,
    Gate,
    Limits,
    decode_upload,
    parse_model_ref,
    read_uploads,
)
from sightwise.serve.metrics import MetricsMiddleware, ServeMetrics
from sightwise.serve.pages import STATIC_DIR, SecurityHeaders, docs_page
from sightwise.serve.schemas import (
    ApiError,
    ErrorResponse,
    Health,
    HeatmapResponse,
    ModelInfo,
    PredictResponse,
    ReloadResponse,
)
from sightwise.serve.swap import LoadedModel, ModelSlot, Watch, Watcher, load_model, local_version

log = logging.getLogger("sightwise.serve")
OVERLAY_MAX_SIDE = 1024  # the overlay is for eyes; a 40 MP PNG answer helps no one
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 503)}
MULTIPART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file"], "properties": {"file": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


@dataclass
class ServeState:
    """Everything the routes share, held on `app.state.sw` (no module-level state)."""

    slot: ModelSlot
    batcher: Batcher
    metrics: ServeMetrics
    limits: Limits
    watcher: Watcher | None
    bundle_path: Path | None
    decode_limiter: anyio.CapacityLimiter
    gate: Gate

    def busy(self, message: str) -> ApiError:
        return ApiError(503, "busy", message, {"Retry-After": str(self.limits.retry_after_s)})

    def model(self) -> LoadedModel:
        m = self.slot.current
        if m is None:
            raise ApiError(503, "not_ready", "no model is loaded yet",
                           {"Retry-After": str(self.limits.retry_after_s)})
        return m


def create_app(bundle: str | Path | None = None, *, name: str | None = None,
               version: int | str | None = None, watch: Watch | None = None,
               token: str | None = None, require_token: bool = False,
               limits: Limits | None = None, max_batch: int = 16,
               batch_window_ms: float = 2.0, threads: int | None = None,
               workers: int | None = None, watch_interval_s: float = 5.0,
               index: str | Path | None = None,
               detector: str | Path | None = None) -> FastAPI:
    """Build the app. Serves `bundle` (as `version`, default `local-<sha>`) and, with
    `watch`, swaps to whatever `(version, bundle_path)` it returns. Without `bundle`, the
    first model comes from `watch()` (the app answers /readyz 503 until one loads).

    `workers` batch threads share one onnxruntime session with `threads` intra-op threads
    each; by default 2 workers (1 on a single core) split the cores between them."""
    if bundle is None and watch is None:
        raise ValueError("create_app needs a bundle, a watch function, or both")
    if require_token and not token:
        raise ValueError(f"require_token needs a token ({TOKEN_ENV} or --token-file)")
    limits = limits or Limits()
    # Pillow logs every EXIF tag of an upload at DEBUG and python-multipart logs bytes of a
    # malformed body at WARNING; uploads must never reach the logs (and a client must not
    # be able to flood them). Both failures are answered with a 4xx already.
    logging.getLogger("PIL").setLevel(max(logging.INFO, logging.getLogger("PIL").level))
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    name = name or _default_name(bundle)
    cores = os.cpu_count() or 1
    workers = workers or min(2, cores)
    threads = threads or max(1, cores // workers)
    state = _build_state(name, bundle, watch, limits, max_batch, batch_window_ms, threads,
                         workers, watch_interval_s)
    if bundle is not None:
        v = version if version is not None else local_version(bundle)
        if not state.slot.swap_to(v, bundle):
            raise _load_error(state.slot)
    elif state.watcher is not None:
        state.watcher.check()  # not ready until this (or a later poll) loads a model

    app = FastAPI(title="Sightwise", version="1", lifespan=_lifespan(state), docs_url=None,
                  redoc_url=None, description="Image classification with calibrated "
                  "probabilities and class activation maps, served from an ONNX bundle.")
    app.state.sw = state
    _add_error_handlers(app)
    _add_routes(app)
    if index is not None:  # POST /v1/search over a FAISS index built with the same bundle
        from sightwise.serve.search_routes import add_search_routes

        add_search_routes(app, index, threads=threads)
    if detector is not None:  # POST /v1/inspect with a good-images-only defect detector
        from sightwise.serve.inspect_routes import add_inspect_routes

        add_inspect_routes(app, detector, threads=threads)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    state.metrics.known_paths = frozenset(r.path for r in app.routes)
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, gate=state.gate)
    app.add_middleware(TokenGate, token=token, require_for_api=require_token)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _lifespan(state: ServeState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        if state.watcher is not None:
            state.watcher.start()
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; drain the rest.
        state.gate.closing = True
        if state.watcher is not None:
            state.watcher.stop()
        await anyio.to_thread.run_sync(state.batcher.close)

    return lifespan


def _load_error(slot: ModelSlot) -> Exception:
    return BundleError(slot.last_error["message"] if slot.last_error else "model did not load")


def _default_name(bundle: str | Path | None) -> str:
    if bundle is None:
        return "model"
    p = Path(bundle).resolve()
    return p.parent.name if p.name == "bundle" and p.parent.name else p.name


def _build_state(name, bundle, watch, limits, max_batch, window_ms, threads, workers,
                 interval_s) -> ServeState:
    gate = Gate(limits.max_queue, limits.retry_after_s)
    batcher = Batcher(_process, max_batch=max_batch, window_ms=window_ms,
                      max_queue=limits.max_queue * limits.max_images, workers=workers)
    metrics = ServeMetrics(queue_depth=batcher.depth, in_flight=lambda: gate.in_flight)
    batcher.on_batch = metrics.batch_size.observe

    def loader(n, v, path):
        return load_model(n, v, path, threads=threads, batch_size=max(64, max_batch))

    def on_change(result: str, model: LoadedModel | None) -> None:
        metrics.swaps.labels(result).inc()
        if result == "loaded" and model is not None:
            metrics.set_model(model.name, model.version)

    slot = ModelSlot(name, loader, on_change)
    watcher = Watcher(slot, watch, interval_s) if watch is not None else None
    return ServeState(slot, batcher, metrics, limits, watcher,
                      Path(bundle) if bundle is not None else None,
                      anyio.CapacityLimiter(max(2, os.cpu_count() or 1)), gate)


def _process(key, payloads: list):
    """The batch worker's job: one ONNX run per (model, kind) group."""
    model, kind = key
    if kind == "predict":
        return list(model.probabilities(payloads))
    return model.explain(payloads)


def _add_error_handlers(app: FastAPI) -> None:
    def answer(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

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
        codes = {404: "not_found", 405: "method_not_allowed"}
        err = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
        err.headers.update(exc.headers or {})
        return answer(err)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)  # path only: no upload bytes
        return answer(ApiError(500, "internal", "internal server error"))


def _add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_page(app.openapi()))

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz():
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", response_model=Health, summary="200 only while a model is loaded",
             responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request):
        state: ServeState = request.app.state.sw
        if state.gate.closing:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        state.model()
        return {"status": "ready", "pid": os.getpid()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request):
        return Response(request.app.state.sw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo, summary="The model answering now",
             responses={503: {"model": ErrorResponse}})
    async def model_info(request: Request):
        state: ServeState = request.app.state.sw
        return {**state.model().info(), "last_swap_error": state.slot.last_error}

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              openapi_extra=MULTIPART_BODY, summary="Top-k classes for one or more images "
              "(multipart field `file`, repeatable)")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)):
        return await _guarded(request, _predict(request, top_k))

    @app.post("/v1/explain", responses={**ERRORS, 200: {"content": {"image/png": {}},
              "model": HeatmapResponse}}, openapi_extra=MULTIPART_BODY,
              summary="Class activation map: PNG overlay, or JSON with ?format=json")
    async def explain(request: Request, format: str = Query("png", pattern="^(png|json)$"),
                      class_name: str | None = Query(None, alias="class", max_length=200)):
        return await _guarded(request, _explain(request, format, class_name))

    @app.post("/v1/admin/reload", response_model=ReloadResponse, responses=ERRORS,
              summary="Reload now (token required): the watched alias, else the bundle folder")
    async def reload(request: Request):
        return await anyio.to_thread.run_sync(_reload, request.app.state.sw)


async def _guarded(request: Request, work):
    """The request deadline around one inference request (admitted by AdmissionMiddleware)."""
    state: ServeState = request.app.state.sw
    try:
        return await asyncio.wait_for(work, state.limits.request_timeout_s)
    except asyncio.TimeoutError:
        if not getattr(request.state, "body_read", False):
            raise ApiError(408, "request_timeout", "the request body did not arrive within "
                           f"{state.limits.request_timeout_s:g} s") from None
        raise state.busy(f"no answer within {state.limits.request_timeout_s:g} s") from None


async def _prepared(request: Request, model: LoadedModel, max_images: int, keep_image: bool):
    """([(filename, uint8 array for `model`, display image or None)], t0) for the request."""
    state: ServeState = request.app.state.sw
    limits = replace(state.limits, max_images=min(max_images, state.limits.max_images))
    uploads = await read_uploads(request.headers.get("content-type"), request.stream(), limits)
    request.state.body_read = True
    t0 = time.perf_counter()

    def decode_all():
        out = []
        for i, up in enumerate(uploads):
            try:
                img = decode_upload(up.data, limits.max_pixels)
            except ApiError as exc:
                exc.message = f"image {i + 1}: {exc.message}"
                raise
            up.data = b""  # drop the upload as soon as it is decoded
            out.append((up.filename, model.prepare(img), _display(img) if keep_image else None))
        return out

    items = await anyio.to_thread.run_sync(decode_all, limiter=state.decode_limiter)
    return items, t0


def _display(img):
    """The image the overlay is drawn on: at most OVERLAY_MAX_SIDE pixels a side."""
    w, h = img.size
    scale = OVERLAY_MAX_SIDE / max(w, h)
    return img if scale >= 1 else img.resize((max(1, round(w * scale)), max(1, round(h * scale))))


async def _batched(state: ServeState, key, payloads: list) -> tuple[list, list[float]]:
    """Submit to the batcher and wait; (results, completion times)."""
    try:
        futures = state.batcher.submit(key, payloads)
    except QueueFull as exc:
        raise state.busy(str(exc)) from None
    except BatcherClosed:
        raise ApiError(503, "shutting_down", "the server is shutting down") from None
    done = [0.0] * len(futures)
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: done.__setitem__(i, time.perf_counter()))
    try:
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except BaseException:
        for f in futures:
            f.cancel()  # the worker skips what this request no longer waits for
        raise
    return results, done


async def _predict(request: Request, top_k: int) -> dict:
    state: ServeState = request.app.state.sw
    model = state.model()  # the whole request is answered by this version, even mid-swap
    items, t0 = await _prepared(request, model, state.limits.max_images, keep_image=False)
    probs, done = await _batched(state, (model, "predict"), [a for _, a, _ in items])
    k = min(top_k, len(model.classes))
    results = []
    for (filename, _, _), p, t in zip(items, probs, done, strict=True):
        order = sorted(range(len(p)), key=lambda c: -float(p[c]))[:k]
        results.append({"filename": filename, "ms": round((t - t0) * 1000, 2),
                        "predictions": [{"label": model.classes[c], "probability": float(p[c])}
                                        for c in order]})
    return {"model": model.ref(), "results": results}


async def _explain(request: Request, fmt: str, class_name: str | None):
    state: ServeState = request.app.state.sw
    model = state.model()
    if not model.explainable:
        raise ApiError(409, "not_explainable", "this bundle has no head.npz; re-export it")
    wanted = None
    if class_name is not None:
        if class_name not in model.classes:
            raise ApiError(422, "unknown_class", f"unknown class {class_name!r}")
        wanted = model.classes.index(class_name)
    items, t0 = await _prepared(request, model, 1, keep_image=fmt == "png")
    filename, array, thumb = items[0]
    (answer,), _ = await _batched(state, (model, "explain"), [(array, wanted)])
    cam, c, probs = answer
    ms = round((time.perf_counter() - t0) * 1000, 2)
    if fmt == "json":
        return {"model": model.ref(), "label": model.classes[c], "probability": float(probs[c]),
                "class_index": c, "heatmap": cam.round(4).tolist(), "ms": ms}
    png = await anyio.to_thread.run_sync(_overlay_png, thumb, cam)
    return Response(png, media_type="image/png", headers={
        "X-Sightwise-Model": quote(str(model.name)),
        "X-Sightwise-Version": quote(str(model.version)),
        "X-Sightwise-Label": quote(model.classes[c]),
        "X-Sightwise-Probability": f"{float(probs[c]):.6f}",
        "Cache-Control": "no-store"})


def _from_registry(model: str) -> tuple[str, int, Path, Watch | None]:
    """(name, version, bundle folder, watch or None) for NAME@ALIAS (watched) or NAME/VERSION
    (pinned); the reference is validated before the registry is touched."""
    name, alias, pinned = parse_model_ref(model)
    # Lazy: only --model needs the registry (and whatever it imports).
    from sightwise.registry.resolve import current_version, resolve_bundle

    if alias is None:
        return name, pinned, Path(resolve_bundle(model)), None

    def watch():
        return current_version(name, alias)

    ref = watch()
    if ref is None:
        raise SightwiseError(f"no version of model {name!r} has the alias {alias!r}")
    return name, ref[0], Path(ref[1]), watch


def _ignore(signum, frame) -> None:
    """A signal handler that does nothing (see serve_main)."""


def _overlay_png(image, cam) -> bytes:
    buf = io.BytesIO()
    overlay_cam(image, cam).save(buf, "PNG")
    return buf.getvalue()


def _reload(state: ServeState) -> dict:
    """Admin reload: re-check the watch function, else re-read the bundle folder."""
    if state.watcher is not None:
        swapped = state.watcher.check(force=True)
    elif state.bundle_path is not None:
        swapped = state.slot.swap_to(local_version(state.bundle_path), state.bundle_path,
                                     force=True)
    else:  # pragma: no cover - create_app refuses this combination
        swapped = False
    if not swapped and state.slot.last_error is not None:
        raise ApiError(409, "swap_failed", f"reload failed, still serving the previous "
                       f"model: {state.slot.last_error['message']}")
    return {"swapped": swapped, "model": {**state.model().info(),
                                          "last_swap_error": state.slot.last_error}}


def serve_main(bundle: str | None = None, model: str | None = None, host: str = "127.0.0.1",
               port: int = 8000, *, token_env: str = TOKEN_ENV, token_file: str | None = None,
               require_token: bool = False, max_batch: int = 16, batch_window_ms: float = 2.0,
               max_queue: int = 64, max_body_mb: float = 16.0, max_images: int = 16,
               max_pixels: int = DEFAULT_MAX_PIXELS, request_timeout_s: float = 30.0,
               threads: int | None = None, workers: int | None = None,
               watch_interval_s: float = 5.0, log_level: str = "info",
               index: str | None = None, detector: str | None = None) -> None:
    """`sightwise serve`: exactly one of `bundle` (a folder) or `model` (NAME@ALIAS, which
    is watched and hot-swapped, or NAME/VERSION, which is pinned). Returns after a graceful
    shutdown (SIGTERM or Ctrl-C): in-flight requests finish, new connections are refused."""
    import uvicorn

    if (bundle is None) == (model is None):
        raise ValueError("give exactly one of --bundle DIR or --model NAME@ALIAS|NAME/VERSION")
    token = load_token(token_env, token_file)
    if require_token and not token:
        raise SightwiseError(f"--require-token needs a token: set {token_env} or pass --token-file")
    limits = Limits(max_body_bytes=int(max_body_mb * MIB), max_images=max_images,
                    max_parts=max(2 * max_images, 32), max_pixels=max_pixels,
                    max_queue=max_queue, request_timeout_s=request_timeout_s)
    name, version, watch = None, None, None
    if model is not None:
        name, version, bundle, watch = _from_registry(model)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    app = create_app(bundle, name=name, version=version, watch=watch, token=token,
                     require_token=require_token, limits=limits, max_batch=max_batch,
                     batch_window_ms=batch_window_ms, threads=threads, workers=workers,
                     watch_interval_s=watch_interval_s, index=index,
                     detector=detector)
    if host not in ("127.0.0.1", "localhost", "::1") and not require_token:
        log.warning("listening on %s without --require-token: anyone who can reach it can "
                    "use the prediction API", host)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1,
                            server_header=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=int(request_timeout_s) + 5,
                            limit_concurrency=max(4 * max_queue, 256))
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it handled once its graceful shutdown is done; with the
    # default actions that would end the process "killed by SIGTERM" (or raise
    # KeyboardInterrupt) instead of returning, so park no-op handlers underneath it.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SightwiseError(f"the server did not start on {host}:{port} (port in use?)")
