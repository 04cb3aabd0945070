"""`sightwise serve`, added to the main app by `register(app)`.

Each option is a field of `ServeSettings` (settings.py, standard library only, so its
defaults are read here without importing the server); the command builds the settings and
hands them to `serve_main`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sightwise.cli_errors import user_errors
from sightwise.serve.settings import ServeSettings, parse_hosts

D = ServeSettings()  # the defaults, spelled once in settings.py


def register(app: typer.Typer) -> None:
    """Add `serve` to the main app."""

    @app.command()
    @user_errors
    def serve(
        bundle: Annotated[str | None, typer.Option("--bundle", help="Bundle folder to serve (or a "
                          "run folder holding bundle/).")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Registry model: NAME@ALIAS "
                         "(watched, hot-swapped) or NAME/VERSION (pinned).")] = None,
        host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = D.host,
        port: Annotated[int, typer.Option(help="TCP port.")] = D.port,
        allowed_hosts: Annotated[str | None, typer.Option(
            "--allowed-hosts", help="Comma-separated Host names the server answers besides "
            "loopback and --host (e.g. models.example.com, *.corp.example); '*' allows any. "
            "Other Host headers get 400 (DNS-rebinding defence).")] = None,
        forwarded_allow_ips: Annotated[str | None, typer.Option(
            "--forwarded-allow-ips", help="Proxy addresses whose X-Forwarded-For/-Proto are "
            "trusted (comma-separated, or '*'); none by default.")] = None,
        header_timeout: Annotated[float, typer.Option(help="Seconds a connection has to send "
                                  "complete request headers.")] = D.header_timeout_s,
        max_connections: Annotated[int, typer.Option(help="Open connections in all.")] = D.max_connections,
        max_connections_per_client: Annotated[int, typer.Option(
            help="Open connections from one client address.")] = D.max_connections_per_client,
        token_file: Annotated[str | None, typer.Option("--token-file", help="File holding the bearer "
                              "token (default: $SIGHTWISE_TOKEN).")] = None,
        require_token: Annotated[bool, typer.Option("--require-token", help="Require the token for "
                                 "prediction too (admin routes always need it).")] = False,
        max_batch: Annotated[int, typer.Option(help="Most images in one ONNX batch.")] = D.max_batch,
        batch_window_ms: Annotated[float, typer.Option(help="How long a batch waits for more "
                                                       "requests.")] = D.batch_window_ms,
        max_queue: Annotated[int, typer.Option(help="Requests in flight before 503 + "
                                               "Retry-After.")] = D.max_queue,
        max_body_mb: Annotated[float, typer.Option(help="Largest request body (MiB).")] = D.max_body_mb,
        max_images: Annotated[int, typer.Option(help="Most images in one request.")] = D.max_images,
        max_pixels: Annotated[int, typer.Option(help="Most pixels in one image.")] = D.max_pixels,
        max_pixels_in_flight: Annotated[int | None, typer.Option(
            help="Pixels decoded at once, all requests together (default: 2 x --max-pixels).")] = None,
        timeout: Annotated[float, typer.Option(help="Request timeout (seconds).")] = D.request_timeout_s,
        threads: Annotated[int | None, typer.Option(help="onnxruntime threads per batch worker.")] = None,
        workers: Annotated[int | None, typer.Option(help="Batch worker threads (default 2).")] = None,
        watch_interval: Annotated[float, typer.Option(help="Seconds between registry alias "
                                                      "checks.")] = D.watch_interval_s,
        index: Annotated[str | None, typer.Option("--index", help="Search index folder for "
                                                  "POST /v1/search.")] = None,
        detector: Annotated[str | None, typer.Option("--detector", help="Defect detector bundle "
                                                     "for POST /v1/inspect.")] = None,
        shadow: Annotated[str | None, typer.Option("--shadow", help="A candidate (NAME@ALIAS, "
                          "e.g. NAME@staging, or NAME/VERSION) run on a copy of the traffic off "
                          "the request path; both answers go to the shadow log that `models "
                          "promote --require-shadow N` and `pipeline` read.")] = None,
        log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = D.log_level,
        log: Annotated[str | None, typer.Option("--log", help="Prediction log folder (default: "
                       "$SIGHTWISE_HOME/logs/<model>); every prediction is recorded and "
                       "tested for drift.")] = None,
        no_log: Annotated[bool, typer.Option("--no-log", help="Record nothing: no prediction "
                          "log, no drift monitor.")] = False,
        keep_images: Annotated[bool, typer.Option("--keep-images", help="Keep each upload in "
                               "the log (metadata stripped, DICOM de-identified) for the "
                               "labelling queue; otherwise uploads never touch the disk.")] = False,
        blur_faces: Annotated[bool, typer.Option("--blur-faces", help="Blur faces in kept "
                              "images (needs the faces extra).")] = False,
        retain: Annotated[str, typer.Option(help="Remove records and kept images older than "
                          "this (e.g. 30d, 12h).")] = D.retain,
        log_max_size: Annotated[str, typer.Option(help="Then the oldest, beyond this size "
                                "(e.g. 500MB, 2GB).")] = D.log_max_size,
        monitor_window: Annotated[int, typer.Option(help="Predictions per drift-test "
                                  "window.")] = D.monitor_window,
        alert_webhook: Annotated[str | None, typer.Option("--alert-webhook", help="POST each "
                                 "drift alert as JSON to this URL.")] = None,
        queue: Annotated[str | None, typer.Option("--queue", help="Labelling queue folder for "
                         "alerts (default: <log>/labelling-queue).")] = None,
        audit_log: Annotated[str | None, typer.Option("--audit-log", help="Hash-chained audit "
                             "log of every admin and monitor request (verify with `sightwise "
                             "privacy verify-audit`).")] = None,
        audit_predictions: Annotated[bool, typer.Option("--audit-predictions", help="Record "
                                     "every prediction in the audit log too.")] = False,
    ) -> None:
        """Serve the HTTP API (/v1, docs at /docs) and the web page; ONNX Runtime only, no torch."""
        from sightwise.serve.runner import serve_main

        if no_log and log:
            raise ValueError("--log DIR and --no-log: choose one")
        serve_main(ServeSettings(
            bundle=bundle, model=model, shadow=shadow, index=index, detector=detector, host=host,
            port=port,
            allowed_hosts=parse_hosts(allowed_hosts), forwarded_allow_ips=forwarded_allow_ips,
            header_timeout_s=header_timeout, max_connections=max_connections,
            max_connections_per_client=max_connections_per_client, token_file=token_file,
            require_token=require_token, max_body_mb=max_body_mb, max_images=max_images,
            max_pixels=max_pixels, max_pixels_in_flight=max_pixels_in_flight,
            max_queue=max_queue, request_timeout_s=timeout, max_batch=max_batch,
            batch_window_ms=batch_window_ms, threads=threads, workers=workers,
            watch_interval_s=watch_interval, log_level=log_level, log=not no_log, log_dir=log,
            keep_images=keep_images, blur_faces=blur_faces, retain=retain,
            log_max_size=log_max_size, monitor_window=monitor_window,
            alert_webhook=alert_webhook, queue_dir=queue, audit_log=audit_log,
            audit_predictions=audit_predictions))
