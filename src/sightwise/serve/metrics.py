"""Prometheus metrics on a per-app registry (two apps in one process, as in the tests, must
not share or collide in prometheus_client's global registry).

Routes are labelled by their template (`/v1/predict`), never by the raw path, so a client
probing random URLs cannot grow the label set without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServeMetrics:
    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sightwise_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("sightwise_http_request_duration_seconds",
                                 "Time from request to the end of the response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("sightwise_batch_size", "Images per ONNX batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("sightwise_queue_depth", "Images waiting for the batch worker",
                           registry=r)
        self.queue.set_function(queue_depth)
        self.in_flight = Gauge("sightwise_in_flight_requests",
                               "Inference requests admitted and not yet answered", registry=r)
        self.in_flight.set_function(in_flight)
        self.model = Gauge("sightwise_model_info", "The model answering (value 1)",
                           ["name", "version"], registry=r)
        self.swaps = Counter("sightwise_model_swaps", "Model loads by result", ["result"],
                             registry=r)
        self._model_labels: tuple[str, str] | None = None
        # Paths answered before routing (401, 413, 503 from middleware) keep their name.
        self.known_paths: frozenset[str] = frozenset()

    def watch(self, connections, budget, observers) -> None:
        """Export the connection table's, the decode budget's and the observers' counts."""
        self.registry.register(_Counts(connections, budget, observers))

    def watch_monitoring(self, monitoring, audit) -> None:
        """Export the drift monitor's gauges and the audit trail's counts (either may be
        None: --no-log, no --audit-log)."""
        self.registry.register(_Monitoring(monitoring, audit))

    def set_model(self, name: str, version) -> None:
        if self._model_labels is not None:
            self.model.remove(*self._model_labels)
        self._model_labels = (name, str(version))
        self.model.labels(*self._model_labels).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Counts:
    """A collector reading plain counters kept elsewhere (no second bookkeeping)."""

    def __init__(self, connections, budget, observers):
        self.connections, self.budget, self.observers = connections, budget, observers

    def collect(self):
        yield GaugeMetricFamily("sightwise_open_connections", "Open client connections",
                                value=self.connections.open)
        events = CounterMetricFamily("sightwise_connections", "Client connections by what "
                                     "happened to them", labels=["event"])
        for event in ("accepted", "evicted", "refused", "header_timeout"):
            events.add_metric([event], self.connections.counts[event])
        yield events
        yield GaugeMetricFamily("sightwise_pixels_in_flight", "Pixels of images being "
                                "decoded now", value=self.budget.in_use)
        observed = CounterMetricFamily("sightwise_observer_events", "Prediction events by "
                                       "outcome", labels=["outcome"])
        for outcome in ("delivered", "dropped", "errors"):
            observed.add_metric([outcome], self.observers.counts[outcome])
        yield observed
        lanes = CounterMetricFamily("sightwise_observer_lane_events", "Prediction events by "
                                    "observer and outcome", labels=["observer", "outcome"])
        for name, counts in self.observers.status().items():
            for outcome in ("delivered", "dropped", "errors"):
                lanes.add_metric([name, outcome], counts[outcome])
        yield lanes


GAUGE_HELP = {
    "sightwise_monitor_p_value": "Family-wise drift p-value of the last tested window",
    "sightwise_monitor_estimated_accuracy_atc": "Label-free accuracy estimate (ATC) of the "
                                                "last tested window",
    "sightwise_monitor_estimated_accuracy_confidence": "Mean max calibrated probability of "
                                                       "the last tested window",
    "sightwise_monitor_drift": "1 when the last tested window drifted",
    "sightwise_monitor_alert": "1 while a drift alert holds (2 of the last 3 windows)",
    "sightwise_monitor_alerts_total": "Drift alerts raised since start",
    "sightwise_monitor_log_lag_seconds": "Age of the oldest prediction record not yet on disk",
    "sightwise_monitor_log_dropped_total": "Prediction records dropped by the log (queue "
                                           "full, write errors)",
}


class _Monitoring:
    """The live monitor's gauges (NaN until a window is tested) and the audit counts."""

    def __init__(self, monitoring, audit):
        self.monitoring, self.audit = monitoring, audit

    def collect(self):
        if self.monitoring is not None:
            for name, value in self.monitoring.mlog.gauges().items():
                yield GaugeMetricFamily(name, GAUGE_HELP.get(name, name.replace("_", " ")),
                                        value=value)
            cleaner = self.monitoring.observer.cleaner
            if cleaner is not None:
                kept = CounterMetricFamily("sightwise_monitor_images", "Uploads kept "
                                           "(cleaned) or not kept (could not be cleaned)",
                                           labels=["outcome"])
                for outcome in ("kept", "not_kept"):
                    kept.add_metric([outcome], cleaner.counts[outcome])
                yield kept
        if self.audit is not None:
            records = CounterMetricFamily("sightwise_audit_records", "Audit records by outcome",
                                          labels=["outcome"])
            for outcome in ("written", "errors", "suppressed"):
                records.add_metric([outcome], self.audit.counts[outcome])
            yield records


def route_label(scope, known_paths: frozenset[str] = frozenset()) -> str:
    """
    >>> route_label({"path": "/v1/predict"}, frozenset({"/v1/predict"}))
    '/v1/predict'
    >>> route_label({"path": "/random/../probe"}), route_label({"path": "/v1/admin/x"})
    ('unmatched', '/v1/admin')
    """
    path = getattr(scope.get("route"), "path", None) or scope.get("path", "")
    if path in known_paths or scope.get("route") is not None:
        return path
    return "/v1/admin" if path.startswith("/v1/admin") else "unmatched"


class MetricsMiddleware:
    """ASGI middleware counting every answer, including those of inner middleware (401, 413)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = route_label(scope, self.metrics.known_paths)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
