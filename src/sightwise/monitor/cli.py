"""Command-line entry points of sightwise.monitor, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands."""

from __future__ import annotations

from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

monitor_app = typer.Typer(help="Drift and label-free accuracy of logged predictions.",
                          no_args_is_help=True)


@monitor_app.command("reference")
@user_errors
def reference(
    bundle: Annotated[str, typer.Argument(help="Exported bundle folder (has model.onnx).")],
    components: Annotated[int, typer.Option(help="PCA components of the embeddings.")] = 32,
    split: Annotated[str, typer.Option(help="Manifest split to profile.")] = "val",
    threads: Annotated[int, typer.Option(help="onnxruntime threads (0: one per core).")] = 0,
):
    """Write reference.npz (the drift reference) into BUNDLE and re-hash bundle.json."""
    from sightwise.monitor.reference import build_reference

    build_reference(bundle, components=components, split=split, threads=threads or None,
                    log=typer.echo)


@monitor_app.command("report")
@user_errors
def report(
    log_dir: Annotated[str, typer.Argument(help="Prediction log folder (serve/predict --log).")],
    bundle: Annotated[str, typer.Option(help="Bundle whose reference.npz the records use.")],
    window: Annotated[int, typer.Option(help="Predictions per tumbling window.")] = 100,
    max_age: Annotated[str, typer.Option(help="A window also closes this long after its "
                                         "first prediction (e.g. 1h, 30m).")] = "1h",
    alpha: Annotated[float, typer.Option(help="Family-wise false-alarm rate per window.")] = 0.01,
    since: Annotated[str, typer.Option(help="Only records newer than this (e.g. 7d).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[str, typer.Option(help="Also write an HTML report with the drift plot.")] = "",
    queue: Annotated[str, typer.Option(help="Write each alert's images to this labelling "
                                       "queue folder.")] = "",
    alert_webhook: Annotated[str, typer.Option(help="POST each new alert as JSON here.")] = "",
):
    """Test every window of LOG_DIR against BUNDLE's reference: p-values, estimated accuracy,
    alerts (--json: one JSON object, windows in time order)."""
    import json
    import time
    from pathlib import Path

    from sightwise.core import atomic_write_text
    from sightwise.monitor.log import parse_retain
    from sightwise.monitor.report import monitor_report, report_html, report_table
    from sightwise.monitor.windows import MonitorConfig

    if not Path(log_dir).is_dir():
        raise FileNotFoundError(f"no prediction log folder {log_dir}")
    config = MonitorConfig(window=window, max_age_s=parse_retain(max_age), alpha=alpha,
                           min_n=min(20, window))
    quiet = as_json  # stdout is the JSON object only
    rep = monitor_report(log_dir, bundle, config=config,
                         since=time.time() - parse_retain(since) if since else None,
                         queue_dir=queue or None, webhook=alert_webhook or None,
                         log=(lambda m: typer.echo(m, err=True)) if quiet else typer.echo)
    if html:
        atomic_write_text(html, report_html(rep))
        typer.echo(f"wrote {html}", err=quiet)
    typer.echo(json.dumps(rep) if as_json else report_table(rep))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
    app.add_typer(monitor_app, name="monitor")
