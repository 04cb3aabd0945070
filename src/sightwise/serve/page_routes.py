"""The page, the API docs, the probes and the metrics: GET /, /docs, /healthz, /readyz,
/metrics. None of them needs the token (a load balancer checks the probes)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sightwise.serve.pages import STATIC_DIR, docs_page
from sightwise.serve.schemas import ApiError, ErrorResponse, Health


def add_page_routes(app: FastAPI) -> None:

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        return HTMLResponse(docs_page(request.app.openapi()))

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Health, summary="200 only while a model is loaded",
                responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request):
        state = request.app.state.sw
        if state.pipeline.gate.closing:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        state.model()
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request):
        return Response(request.app.state.sw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

