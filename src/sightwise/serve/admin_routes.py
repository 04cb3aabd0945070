"""Admin routes (the bearer token is always required, checked by `TokenGate` before
routing): POST /v1/admin/reload, GET /v1/admin/status and GET /v1/admin/audit (the audit
log's tail and chain head, with --audit-log). With --audit-log every request to them is
recorded (audit.py); a route adds what it did through `request.state.audit`.

The status is where details the public answers leave out are shown: the full text of
the last swap error (it names files), the bundle folder, the process id, the settings and
the connection and decode counters.
"""

from __future__ import annotations

import os

import anyio
from fastapi import FastAPI, Query, Request

from sightwise.serve.schemas import ApiError, ErrorResponse, ReloadResponse
from sightwise.serve.swap import local_version

ADMIN_ERRORS = {code: {"model": ErrorResponse} for code in (401, 409, 503)}


def add_admin_routes(app: FastAPI) -> None:

    @app.post("/v1/admin/reload", response_model=ReloadResponse, responses=ADMIN_ERRORS,
                 summary="Reload now (token required): the watched alias, else the bundle folder")
    async def reload(request: Request):
        state = request.app.state.sw
        before = state.current_version()
        request.state.audit = {"version_before": before}
        try:
            answer = await anyio.to_thread.run_sync(_reload, state)
        except ApiError as exc:
            request.state.audit = {"version_before": before, "error": exc.code}
            raise
        request.state.audit = {"version_before": before, "swapped": answer["swapped"],
                               "version_after": state.current_version()}
        return answer

    @app.get("/v1/admin/status", responses=ADMIN_ERRORS,
                summary="Details for operators (token required): model, bundle folder, last "
                "swap error in full, settings, connections, work in flight")
    async def status(request: Request):
        return _status(request.app.state.sw)

    @app.get("/v1/admin/audit", responses=ADMIN_ERRORS,
             summary="The audit log's last records and its chain head (token required; "
             "--audit-log): keep the head elsewhere to detect a cut tail later")
    async def audit(request: Request, limit: int = Query(100, ge=1, le=1000)):
        trail = request.app.state.sw.audit
        if trail is None:
            raise ApiError(409, "audit_off", "start the server with --audit-log PATH")
        return await anyio.to_thread.run_sync(trail.tail, limit)


def _reload(state) -> dict:
    """Re-check the watch function, else re-read the bundle folder."""
    if state.watcher is not None:
        swapped = state.watcher.check(force=True)
    elif state.bundle_path is not None:  # a folder, or a pinned registry version
        version = state.version if state.version is not None else local_version(state.bundle_path)
        swapped = state.slot.swap_to(version, state.bundle_path, force=True)
    else:  # pragma: no cover - create_app refuses this combination
        swapped = False
    if not swapped and state.slot.last_error is not None:
        # Token holders may see the details (they can read the log anyway).
        raise ApiError(409, "swap_failed", "reload failed, still serving the previous "
                       f"model: {state.slot.last_error['message']}")
    return {"swapped": swapped, "model": {**state.model().info(),
                                          "last_swap_error": state.slot.public_error()}}


def _status(state) -> dict:
    current = state.slot.current
    pipeline = state.pipeline
    return {
        "pid": os.getpid(),
        "started_at": state.started_at,
        "model": current.info() if current else None,
        "bundle_path": str(current.path) if current else None,
        "last_swap_error": state.slot.last_error,
        "watching": state.watcher is not None,
        "in_flight": pipeline.gate.in_flight,
        "pixels_in_flight": pipeline.budget.in_use,
        "queue_depth": state.batcher.depth(),
        "connections": state.connections.status(),
        "observers": {"count": len(state.observers.observers), **state.observers.counts,
                      "each": state.observers.status()},
        "prediction_log": state.monitoring.mlog.log.status() if state.monitoring else None,
        "audit": ({"path": str(state.audit.log.path), **state.audit.counts}
                  if state.audit else None),
        "settings": state.settings.public(),
    }
