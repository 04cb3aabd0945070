"""The HTTP app: `create_app(settings)` wires the parts (starlette-style constructor wiring).
`sightwise serve` runs it with uvicorn through `sightwise.serve.runner.serve_main`.

Request path of every image route, outermost first: metrics -> security headers -> Host
and Origin check -> token gate -> admission (503 at once when `max_queue` requests are in
flight) -> body limit -> the route's router -> the shared pipeline (deadline, upload,
decode within the pixel budget; pipeline.py) -> for predict/explain the batcher (one ONNX
batch for requests arriving within the window) -> JSON naming the model version that
computed it -> prediction observers, off the request path (observers.py: the prediction
log of monitoring.py, the audit trail of audit.py, any given to create_app). Routers:
page_routes (page, docs, probes, metrics), predict_routes, admin_routes, monitor_routes,
and with --index / --detector search_routes and inspect_routes. Requests to the admin and
monitor routes are recorded by the audit middleware (audit.py) with --audit-log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sightwise.core import parse_model_ref
from sightwise.errors import BundleError, SightwiseError
from sightwise.serve.admin_routes import add_admin_routes
from sightwise.serve.admission import AdmissionMiddleware, BodyLimitMiddleware
from sightwise.serve.audit import AuditMiddleware, AuditObserver, ServeAudit
from sightwise.serve.auth import TOKEN_ENV, TokenGate, always_protected, token_matches
from sightwise.serve.batching import Batcher
from sightwise.serve.connections import ConnectionTable
from sightwise.serve.errors import install_error_handlers
from sightwise.serve.hosts import HostCheck
from sightwise.serve.metrics import MetricsMiddleware, ServeMetrics
from sightwise.serve.monitor_routes import add_monitor_routes
from sightwise.serve.monitoring import Monitoring, build_monitoring
from sightwise.serve.observers import Observer, Observers
from sightwise.serve.page_routes import add_page_routes
from sightwise.serve.pages import STATIC_DIR, SecurityHeaders
from sightwise.serve.pipeline import Pipeline
from sightwise.serve.predict_routes import add_predict_routes
from sightwise.serve.schemas import ApiError
from sightwise.serve.settings import ServeSettings
from sightwise.serve.swap import (
    LoadedModel,
    ModelSlot,
    Watch,
    Watcher,
    bundle_dir,
    load_model,
    local_version,
    now_iso,
)

log = logging.getLogger("sightwise.serve")


@dataclass
class ServeState:
    """Everything the routes share, held on `app.state.sw` (no module-level state)."""

    settings: ServeSettings
    pipeline: Pipeline
    slot: ModelSlot
    batcher: Batcher
    metrics: ServeMetrics
    watcher: Watcher | None
    bundle_path: Path | None
    version: int | str | None  # the version a bundle is served as (None: local-<sha>)
    connections: ConnectionTable
    observers: Observers
    started_at: str
    monitoring: Monitoring | None = None  # --log (the default): the log and drift monitor
    audit: ServeAudit | None = None       # --audit-log
    token: str | None = None

    def model(self) -> LoadedModel:
        m = self.slot.current
        if m is None:
            raise ApiError(503, "not_ready", "no model is loaded yet",
                           {"Retry-After": str(self.settings.retry_after_s)})
        return m

    def current_version(self) -> str | None:
        m = self.slot.current
        return None if m is None else str(m.version)

    def token_id_of(self, authorization: str | None) -> str | None:
        """The audit id of the request's token when it is the server's token, else None."""
        if self.audit is None or not token_matches(authorization, self.token):
            return None
        return self.audit.token_id


def create_app(settings: ServeSettings | None = None, *, token: str | None = None,
               watch: Watch | None = None, observers: Sequence[Observer] = ()) -> FastAPI:
    """Build the app for `settings`.

    The model comes from `settings.bundle` (served as `settings.version`, default
    `local-<sha>`), from `watch` (a function returning `(version, bundle folder)` or None,
    polled every `watch_interval_s` and swapped to when it changes), or from
    `settings.model` (a registry reference, resolved here). `token` enables the admin and
    monitor routes (and guards /v1 with `require_token`); `observers` are called with every
    prediction, off the request path (observers.py), after the server's own (the
    prediction log unless `settings.log` is False, the audit of predictions).
    """
    settings = settings or ServeSettings()
    if settings.require_token and not token:
        raise ValueError(f"require_token needs a token ({TOKEN_ENV} or --token-file)")
    # Pillow logs every EXIF tag of an upload at DEBUG and python-multipart logs bytes of a
    # malformed body at WARNING; uploads must never reach the logs (and a client must not
    # be able to flood them). Both failures are answered with a 4xx already.
    logging.getLogger("PIL").setLevel(max(logging.INFO, logging.getLogger("PIL").level))
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    name, version, bundle, watch = _source(settings, watch)
    registry_name = parse_model_ref(settings.model)[0] if (
        settings.model is not None and settings.bundle is None) else None
    # Checked before the model loads: an unwritable audit log or a missing extra for
    # --blur-faces is one line at start-up, not a surprise at the first request.
    audit = ServeAudit(settings.audit_log, token, lambda: None) if settings.audit_log else None
    monitoring = build_monitoring(settings, name)
    own = ([monitoring.observer] if monitoring else []) + (
        [AuditObserver(audit)] if audit is not None and settings.audit_predictions else [])
    if settings.shadow is not None:
        from sightwise.serve.shadow import ShadowObserver

        own.append(ShadowObserver(settings.shadow, watch_interval_s=settings.watch_interval_s,
                                  monitor_log=monitoring.mlog if monitoring else None))
    try:
        state = _build_state(settings, name, bundle, version, watch, [*own, *observers],
                             registry_name)
        state.monitoring, state.audit, state.token = monitoring, audit, token
        state.metrics.watch_monitoring(monitoring, audit)
        if audit is not None:
            audit.model_version = state.current_version
        _load_first_model(state, bundle, version)
    except BaseException:
        if monitoring is not None:  # its writer thread would outlive the failed start
            monitoring.close(timeout=1.0)
        raise
    return _assemble(state, settings, token)


def _load_first_model(state: ServeState, bundle: Path | None, version) -> None:
    if bundle is not None:
        if not state.slot.swap_to(version if version is not None else local_version(bundle),
                                  bundle):
            raise BundleError(state.slot.last_error["message"] if state.slot.last_error
                              else "the model did not load")
    elif state.watcher is not None:
        state.watcher.check()  # not ready until this (or a later poll) loads a model


def _assemble(state: ServeState, settings: ServeSettings, token: str | None) -> FastAPI:
    """The FastAPI app around `state`: routers, static files, the middleware stack."""
    app = FastAPI(title="Sightwise", version="1", lifespan=_lifespan(state), docs_url=None,
                  redoc_url=None, description="Image classification with calibrated "
                  "probabilities and class activation maps, served from an ONNX bundle.")
    app.state.sw, app.state.pipeline = state, state.pipeline
    install_error_handlers(app)
    add_page_routes(app)
    add_predict_routes(app, state.pipeline)
    add_admin_routes(app)
    add_monitor_routes(app)
    if settings.index is not None:  # POST /v1/search over a FAISS index
        from sightwise.serve.search_routes import add_search_routes

        add_search_routes(app, settings.index, threads=settings.threads)
    if settings.detector is not None:  # POST /v1/inspect with a defect detector
        from sightwise.serve.inspect_routes import add_inspect_routes

        add_inspect_routes(app, settings.detector, threads=settings.threads)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    state.metrics.known_paths = frozenset(r.path for r in app.routes)
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, gate=state.pipeline.gate)
    app.add_middleware(TokenGate, token=token, require_for_api=settings.require_token)
    app.add_middleware(AuditMiddleware, audit=state.audit, protected=always_protected)
    app.add_middleware(HostCheck, names=settings.host_allowlist())
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _lifespan(state: ServeState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        state.observers.start()
        if state.watcher is not None:
            state.watcher.start()
        if state.audit is not None:
            await anyio.to_thread.run_sync(lambda: state.audit.server("server.start",
                                                                       pid=os.getpid()))
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; drain the rest.
        state.pipeline.gate.closing = True
        if state.watcher is not None:
            state.watcher.stop()
        await anyio.to_thread.run_sync(state.batcher.close)
        await anyio.to_thread.run_sync(state.observers.close)
        if state.monitoring is not None:
            await anyio.to_thread.run_sync(state.monitoring.close)
        if state.audit is not None:
            await anyio.to_thread.run_sync(lambda: state.audit.server("server.stop",
                                                                       pid=os.getpid()))

    return lifespan


def served_name(path: str | Path) -> str:
    """A bundle folder's name for answers: the run's name for RUN/bundle."""
    p = Path(path).resolve()
    return p.parent.name if p.name == "bundle" and p.parent.name else p.name


def _source(settings: ServeSettings, watch: Watch | None):
    """(name, version, bundle folder or None, watch or None) to serve."""
    if settings.bundle is not None:
        bundle = bundle_dir(settings.bundle)
        return settings.name or served_name(bundle), settings.version, bundle, watch
    if watch is not None:
        return settings.name or "model", settings.version, None, watch
    if settings.model is not None:
        name, version, bundle, watch = _from_registry(settings.model)
        return settings.name or name, version, bundle, watch
    raise ValueError("create_app needs a bundle, a registry model or a watch function")


def _from_registry(model: str) -> tuple[str, int, Path, Watch | None]:
    """(name, version, bundle folder, watch or None) for NAME@ALIAS (watched) or
    NAME/VERSION (pinned); the reference is validated before the registry is touched."""
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
    return name, ref[0], Path(ref[1]), watch  # loaded now: a broken release fails start-up


def _build_state(settings: ServeSettings, name: str, bundle: Path | None,
                 version: int | str | None, watch: Watch | None,
                 observers: Sequence[Observer], registry_name: str | None = None) -> ServeState:
    cores = os.cpu_count() or 1
    workers = settings.workers or min(2, cores)
    threads = settings.threads or max(1, cores // workers)
    pipeline = Pipeline(settings)
    batcher = Batcher(_process, max_batch=settings.max_batch, window_ms=settings.batch_window_ms,
                      max_queue=settings.max_queue * settings.max_images, workers=workers)
    metrics = ServeMetrics(queue_depth=batcher.depth, in_flight=lambda: pipeline.gate.in_flight)
    batcher.on_batch = metrics.batch_size.observe
    connections = ConnectionTable(settings.max_connections, settings.max_connections_per_client,
                                  settings.retry_after_s)
    observed = Observers(observers)
    pipeline.hash_uploads = bool(observed)
    pipeline.keep_bytes = observed.wants_image_bytes  # --keep-images: held in memory only
    metrics.watch(connections, pipeline.budget, observed)

    def loader(n, v, path):
        source = path
        if registry_name is not None and isinstance(v, int):
            # A registered version (at start-up, on a watched alias's move, on reload) is
            # checked against the bundle.json hash the registry recorded at registration.
            from sightwise.registry.resolve import open_version

            source = open_version(registry_name, v)
        return load_model(n, v, source, threads=threads, batch_size=max(64, settings.max_batch))

    def on_change(result: str, model: LoadedModel | None) -> None:
        metrics.swaps.labels(result).inc()
        if result == "loaded" and model is not None:
            metrics.set_model(model.name, model.version)

    slot = ModelSlot(name, loader, on_change)
    watcher = Watcher(slot, watch, settings.watch_interval_s) if watch is not None else None
    return ServeState(settings, pipeline, slot, batcher, metrics, watcher, bundle, version,
                      connections, observed, now_iso())


def _process(key, payloads: list):
    """The batch worker's job: one ONNX run per (model, kind) group."""
    model, kind = key
    if kind == "explain":
        return model.explain(payloads)
    probs, embeddings = model.probabilities(payloads, embedding=kind == "predict+embedding")
    if embeddings is None:
        return [(p, None) for p in probs]
    return list(zip(probs, embeddings, strict=True))
