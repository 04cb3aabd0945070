"""The drift monitor's surface (token required, like the admin routes: `TokenGate` checks
before routing): GET /v1/monitor (the JSON summary) and GET /v1/monitor/plot.png (the
drift chart the web page shows when it has the token). Both answer from memory: the live
monitor's windows of the version that answered last (monitoring.py); `sightwise monitor
report LOG --bundle B` re-reads the whole log."""

from __future__ import annotations

import math

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from sightwise.serve.schemas import ApiError, ErrorResponse

MONITOR_ERRORS = {code: {"model": ErrorResponse} for code in (401, 409)}


def add_monitor_routes(app: FastAPI) -> None:

    @app.get("/v1/monitor", responses=MONITOR_ERRORS,
             summary="Drift monitor (token required): the last windows' p-values, estimated "
             "accuracy and alerts for the version answering, the log's health, the gauges")
    async def monitor(request: Request, last: int = Query(50, ge=1, le=500)):
        monitoring = _monitoring(request)
        return finite(monitoring.summary(last))

    @app.get("/v1/monitor/plot.png", responses={**MONITOR_ERRORS,
             200: {"content": {"image/png": {}}}}, response_class=Response,
             summary="Drift chart (token required): -log10 p per window with alerts shaded, "
             "and the label-free accuracy estimates")
    async def plot(request: Request, last: int = Query(50, ge=1, le=500),
                   dpi: int = Query(110, ge=40, le=200)):
        monitoring = _monitoring(request)
        png = await anyio.to_thread.run_sync(monitoring.plot_png, last, dpi)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _monitoring(request: Request):
    monitoring = request.app.state.sw.monitoring
    if monitoring is None:
        raise ApiError(409, "monitor_off", "the server runs with --no-log: no prediction log, "
                       "no drift monitor")
    return monitoring


def finite(obj):
    """`obj` with NaN and infinities as None: JSON has no NaN (a gauge is NaN until the
    first window is tested).

    >>> finite({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"})
    {'a': [1.0, None], 'b': None, 'c': 'x'}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
