"""The classifier's surface: GET /v1/model, POST /v1/predict, POST /v1/explain.

Both POST routes run the shared pipeline (pipeline.py) and then the batcher, so requests
arriving within a few milliseconds share one ONNX run; every answer names the model
version that computed it, even across a hot swap.
"""

from __future__ import annotations

import asyncio
import io
import time
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from sightwise.core import top_k_indices
from sightwise.heatmap import translucent_overlay, with_legend
from sightwise.serve.batching import BatcherClosed, QueueFull
from sightwise.serve.observers import PredictionEvent
from sightwise.serve.pipeline import Pipeline
from sightwise.serve.schemas import (
    ApiError,
    ErrorResponse,
    HeatmapResponse,
    ModelInfo,
    PredictResponse,
)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 415, 422, 503)}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def add_predict_routes(app: FastAPI, pipeline: Pipeline) -> None:
    for path in ("/v1/predict", "/v1/explain"):
        pipeline.route(path)

    @app.get("/v1/model", response_model=ModelInfo, summary="The model answering now",
                responses={503: {"model": ErrorResponse}})
    async def model_info(request: Request):
        state = request.app.state.sw
        return {**state.model().info(), "last_swap_error": state.slot.public_error()}

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
                 openapi_extra=UPLOAD_BODY, summary="Top-k classes for one or more images "
                 "(multipart field `file`, repeatable; or one image as the body)")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)):
        state = request.app.state.sw
        model = state.model()  # the whole request is answered by this version, even mid-swap

        async def answer(items, t0):
            return await _predict_answer(state, model, items, t0, top_k, request)

        return await state.pipeline.run(request, answer, prepare=model.prepare)

    @app.post("/v1/explain", responses={**ERRORS, 409: {"model": ErrorResponse},
                 200: {"content": {"image/png": {}}, "model": HeatmapResponse}},
                 openapi_extra=UPLOAD_BODY, summary="Class activation map: the image with "
                 "a translucent heat map and its colour legend (PNG), or JSON with ?format=json")
    async def explain(request: Request, format: str = Query("png", pattern="^(png|json)$"),
                      class_name: str | None = Query(None, alias="class", max_length=200)):
        state = request.app.state.sw
        model = state.model()
        if not model.explainable:
            raise ApiError(409, "not_explainable", "this bundle has no head.npz; re-export it")
        wanted = None
        if class_name is not None:
            if class_name not in model.classes:
                raise ApiError(422, "unknown_class", f"unknown class {class_name!r}")
            wanted = model.classes.index(class_name)

        async def answer(items, t0):
            return await _explain_answer(state, model, items[0], t0, wanted, format)

        return await state.pipeline.run(request, answer, prepare=model.prepare, max_images=1,
                                        display=format == "png")



async def batched(state, key, payloads: list) -> tuple[list, list[float]]:
    """Submit to the batcher and wait; (results, completion times)."""
    try:
        futures = state.batcher.submit(key, payloads)
    except QueueFull as exc:
        raise state.pipeline.busy(str(exc)) from None
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


async def _predict_answer(state, model, items, t0: float, top_k: int, request) -> dict:
    kind = "predict+embedding" if state.observers.wants_embedding else "predict"
    answers, done = await batched(state, (model, kind), [it.value for it in items])
    results, events = [], []
    if state.observers:  # who asked, for the audit trail (the token only as its hash)
        client = request.client.host if request.client else None
        tid = state.token_id_of(request.headers.get("authorization"))
    for item, (probs, embedding), t in zip(items, answers, done, strict=True):
        order = top_k_indices(probs, top_k)
        results.append({"filename": item.filename, "ms": round((t - t0) * 1000, 2),
                        "predictions": [{"label": model.classes[c], "probability": float(probs[c])}
                                        for c in order]})
        if state.observers:
            events.append(PredictionEvent(
                model.name, model.version, item.filename, probs, embedding, item.sha256 or "",
                t - t0, time.time(), item.value, image_bytes=item.data, bundle_path=model.path,
                client=client, token_id=tid, classes=model.classes))
    if events:
        state.observers.notify(events)  # queued: the answer never waits for an observer
    return {"model": model.ref(), "results": results}


async def _explain_answer(state, model, item, t0: float, wanted: int | None, fmt: str):
    (answer,), _ = await batched(state, (model, "explain"), [(item.value, wanted)])
    cam, c, probs = answer
    ms = round((time.perf_counter() - t0) * 1000, 2)
    label = model.classes[c]
    if fmt == "json":
        return {"model": model.ref(), "label": label, "probability": float(probs[c]),
                "class_index": c, "heatmap": cam.round(4).tolist(), "ms": ms}
    png = await anyio.to_thread.run_sync(explain_png, item.display, cam, label)
    return Response(png, media_type="image/png", headers={
        "X-Sightwise-Model": quote(str(model.name)),
        "X-Sightwise-Version": quote(str(model.version)),
        "X-Sightwise-Label": quote(label),
        "X-Sightwise-Probability": f"{float(probs[c]):.6f}",
        "Cache-Control": "no-store"})


def explain_png(image, cam, label: str) -> bytes:
    """The PNG /v1/explain answers: the image under a translucent heat map, and the
    colour legend below it."""
    # An all-zero map is an answer too: no region speaks for the class (the image is then
    # shown untinted, which without this caption would look like a missing heat map).
    caption = (f"Where the model looked for {label}" if cam.any()
               else f"No region of the image speaks for {label}")
    figure = with_legend(translucent_overlay(image, cam), caption, "less", "more")
    buf = io.BytesIO()
    figure.save(buf, "PNG")
    return buf.getvalue()
