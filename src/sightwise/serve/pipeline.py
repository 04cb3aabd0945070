"""The one path every image-taking route runs: upload -> admission -> deadline -> decode ->
errors, so /v1/predict, /v1/explain, /v1/search and /v1/inspect answer the same input with
the same status codes.

    admission   AdmissionMiddleware: 503 + Retry-After when `max_queue` requests are in
                flight (the routers register their paths with `Pipeline.route`)
    body        BodyLimitMiddleware: 413 over `max_body_mb`; then `read_uploads`
    deadline    the whole request (body, decode, inference) within `request_timeout_s`:
                408 if the body did not arrive in time, else 503 + Retry-After
    decode      per image: header probe (415/413/422), pixels taken from the decode
                budget, decode, the route's `prepare` (resize, embed, score) in a thread
    errors      every failure is an ApiError, answered as {"error": {...}} by the app
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from PIL import Image
from starlette.requests import Request

from sightwise.core import sha256_bytes
from sightwise.serve.admission import Gate
from sightwise.serve.budget import Hold, PixelBudget
from sightwise.serve.schemas import ApiError
from sightwise.serve.settings import ServeSettings
from sightwise.serve.uploads import Upload, decode, probe, read_uploads

OVERLAY_MAX_SIDE = 1024  # images drawn for eyes; a 40 MP PNG answer helps no one


@dataclass
class Item:
    """One decoded upload: what the route's `prepare` made of it, and what it may show."""

    filename: str | None
    value: object                 # prepare(image): a model input, an embedding, a score
    display: Image.Image | None   # at most OVERLAY_MAX_SIDE a side, when asked for
    sha256: str | None            # of the upload's bytes, when observers want it
    pixels: int
    data: bytes | None = None     # the upload itself, only when an observer keeps images


@dataclass
class _Wait:
    pixels: int  # the image did not fit in the decode budget right now


class Pipeline:
    """Shared by the routers of one app (held on `app.state.pipeline`)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.gate = Gate(settings.max_queue, settings.retry_after_s)
        self.budget = PixelBudget(settings.pixels_in_flight)
        # Decode threads at once; the pixel budget bounds their memory.
        self.limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
        self.hash_uploads = False  # set when an observer wants each image's sha256
        self.keep_bytes = False    # set when an observer wants the uploads (--keep-images)

    def route(self, path: str) -> None:
        """Put `path` behind the admission gate."""
        self.gate.paths.add(path)

    def busy(self, message: str) -> ApiError:
        return ApiError(503, "busy", message, {"Retry-After": str(self.settings.retry_after_s)})

    async def run(self, request: Request, work: Callable[[list[Item], float], Awaitable],
                  *, prepare: Callable[[Image.Image], object], max_images: int | None = None,
                  display: bool = False):
        """Read the request's images, decode and `prepare` each, then return
        `await work(items, t0)` (t0: when the body had arrived), all within the deadline."""
        s = self.settings

        async def whole():
            uploads = await read_uploads(
                request.headers.get("content-type"), request.stream(),
                max_images=min(max_images or s.max_images, s.max_images), max_parts=s.max_parts)
            request.state.body_read = True
            t0 = time.perf_counter()
            items = []
            for i in range(len(uploads)):
                up, uploads[i] = uploads[i], None  # drop each upload once decoded
                try:
                    items.append(await self._decode(up, prepare, display))
                except ApiError as exc:
                    if len(uploads) > 1:
                        exc.message = f"image {i + 1}: {exc.message}"
                    raise
            return await work(items, t0)

        try:
            return await asyncio.wait_for(whole(), s.request_timeout_s)
        except asyncio.TimeoutError:
            if not getattr(request.state, "body_read", False):
                raise ApiError(408, "request_timeout", "the request body did not arrive within "
                               f"{s.request_timeout_s:g} s") from None
            raise self.busy(f"no answer within {s.request_timeout_s:g} s") from None

    async def _decode(self, up: Upload, prepare, display: bool) -> Item:
        """Probe and decode in one thread hop when the budget has room (the usual case);
        otherwise wait for room and decode in a second hop."""
        result = await self._in_thread(self._work, up, prepare, display, None)
        if isinstance(result, _Wait):
            await self.budget.take(result.pixels)
            hold = Hold(self.budget, result.pixels)
            try:
                result = await self._in_thread(self._work, up, prepare, display, hold)
            finally:
                hold.abandon()  # a no-op unless the thread never started
        return result

    async def _in_thread(self, fn, *args):
        # abandon_on_cancel: at the deadline the request is answered at once; the thread
        # finishes its one image in the background and gives its pixels back itself.
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True,
                                              limiter=self.limiter)

    def _work(self, up: Upload, prepare, display: bool, hold: Hold | None):
        """In a worker thread: (probe, take pixels,) decode, prepare; pixels given back."""
        max_pixels = self.settings.max_pixels
        if hold is None:
            pixels = probe(up.data, max_pixels)
            if not self.budget.try_take(pixels):
                return _Wait(pixels)
            hold = Hold(self.budget, pixels)
        if not hold.claim():
            return None  # the request gave up while this thread waited to start
        try:
            image = decode(up.data, max_pixels)
            value = prepare(image)
            shown = thumbnail(image) if display else None
            sha = sha256_bytes(up.data) if self.hash_uploads else None
            return Item(up.filename, value, shown, sha, hold.n,
                        up.data if self.keep_bytes else None)
        finally:
            hold.release()


def thumbnail(image: Image.Image, side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """`image` scaled to at most `side` pixels a side (unchanged if smaller)."""
    w, h = image.size
    scale = side / max(w, h)
    if scale >= 1:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))))


def pipeline_of(app) -> Pipeline:
    """The app's pipeline. An app not made by `create_app` (a plain FastAPI app that a
    router is added to) gets one with the default settings, its admission and body-limit
    middleware and the JSON error handlers."""
    pipeline = getattr(app.state, "pipeline", None)
    if pipeline is None:
        from sightwise.serve.admission import AdmissionMiddleware, BodyLimitMiddleware
        from sightwise.serve.errors import install_error_handlers

        pipeline = app.state.pipeline = Pipeline(ServeSettings())
        install_error_handlers(app)
        app.add_middleware(BodyLimitMiddleware, max_bytes=pipeline.settings.max_body_bytes)
        app.add_middleware(AdmissionMiddleware, gate=pipeline.gate)
    return pipeline
