"""`sightwise serve`, added to the main app by `register(app)` (typer only at import)."""

from __future__ import annotations

from typing import Annotated

import typer

from sightwise.cli_errors import user_errors


def register(app: typer.Typer) -> None:
    """Add `serve` to the main app."""

    @app.command()
    @user_errors
    def serve(
        bundle: Annotated[str | None, typer.Option("--bundle", help="Bundle folder to serve.")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Registry model: NAME@ALIAS "
                         "(watched, hot-swapped) or NAME/VERSION (pinned).")] = None,
        host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
        token_file: Annotated[str | None, typer.Option("--token-file", help="File holding the bearer "
                              "token (default: $SIGHTWISE_TOKEN).")] = None,
        require_token: Annotated[bool, typer.Option("--require-token", help="Require the token for "
                                 "prediction too (admin routes always need it).")] = False,
        max_batch: Annotated[int, typer.Option(help="Most images in one ONNX batch.")] = 16,
        batch_window_ms: Annotated[float, typer.Option(help="How long a batch waits for more "
                                                       "requests.")] = 2.0,
        max_queue: Annotated[int, typer.Option(help="Requests in flight before 503 + "
                                               "Retry-After.")] = 64,
        max_body_mb: Annotated[float, typer.Option(help="Largest request body (MiB).")] = 16.0,
        max_images: Annotated[int, typer.Option(help="Most images in one request.")] = 16,
        timeout: Annotated[float, typer.Option(help="Request timeout (seconds).")] = 30.0,
        threads: Annotated[int | None, typer.Option(help="onnxruntime threads per batch worker.")] = None,
        workers: Annotated[int | None, typer.Option(help="Batch worker threads (default 2).")] = None,
        watch_interval: Annotated[float, typer.Option(help="Seconds between registry alias "
                                                      "checks.")] = 5.0,
        index: Annotated[str | None, typer.Option("--index", help="Search index folder for "
                                                  "POST /v1/search.")] = None,
        detector: Annotated[str | None, typer.Option("--detector", help="Defect detector bundle "
                                                     "for POST /v1/inspect.")] = None,
    ) -> None:
        """Serve the HTTP API (/v1, docs at /docs) and the web page; ONNX Runtime only, no torch."""
        from sightwise.serve.app import serve_main

        serve_main(bundle=bundle, model=model, host=host, port=port, token_file=token_file,
                   require_token=require_token, max_batch=max_batch, batch_window_ms=batch_window_ms,
                   max_queue=max_queue, max_body_mb=max_body_mb, max_images=max_images,
                   request_timeout_s=timeout, threads=threads, workers=workers,
                   watch_interval_s=watch_interval, index=index, detector=detector)
