"""Command-line entry points of sightwise.pipeline, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands.

    sightwise pipeline run PIPELINE.toml [--from STAGE] [--dry-run] [--json] [--watch]
    sightwise pipeline summary WORK/summary.json [--markdown]

`run` prints the summary on stdout (JSON with --json) and the stages' progress on stderr,
and exits 0 promoted, 3 gated out, 2 bad input, 1 error.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

pipeline_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="CI/CD for models: data -> train -> evaluate -> export -> gates "
                                "-> register -> staging -> shadow -> production, each stage "
                                "skipped when its inputs are unchanged.")


def _error_json(msg: str, code: int) -> str:
    return json.dumps({"stages": [], "gates": [], "skipped_gates": [], "promoted": False, "version": None,
                       "outcome": "bad input" if code == 2 else "error", "reason": msg,
                       "exit_code": code}, indent=2)


def _emit(summary: dict, as_json: bool) -> None:
    from sightwise.pipeline.report import format_text

    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else format_text(summary))


@pipeline_app.command("run")
def run(
    pipeline: Annotated[str, typer.Argument(help="PIPELINE.toml (relative paths in it resolve "
                                            "against its folder).")],
    from_stage: Annotated[str | None, typer.Option(
        "--from", help="Run this stage and every later one even if their inputs are unchanged "
        "(data, train, evaluate, export, gates, register, staging, shadow, production).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say which stages would run or be "
                                          "skipped; run and write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    work: Annotated[str | None, typer.Option(help="Work folder (default: the TOML's pipeline.work, "
                                             "else .sightwise-pipeline/NAME beside the TOML).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep running: run again whenever the "
                                        "dataset or the labels file changes.")] = False,
    interval: Annotated[float, typer.Option(min=1.0, help="--watch: seconds between checks.")] = 60.0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the model pipeline; exit 0 promoted, 3 gated out, 2 bad input, 1 error."""
    from sightwise.errors import SightwiseError
    from sightwise.pipeline.runner import check_stage, run_pipeline
    from sightwise.pipeline.spec import load_spec

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    try:
        spec = load_spec(pipeline, work=work)
        check_stage(from_stage)
    except SightwiseError as exc:
        typer.echo(f"error: {exc}", err=True)
        if as_json:
            typer.echo(_error_json(str(exc), 2))
        raise typer.Exit(2) from None
    if watch:
        raise typer.Exit(_watch(spec, interval, as_json, progress, log))
    summary = run_pipeline(spec, from_stage=from_stage, dry_run=dry_run, log=log,
                           progress=progress)
    if summary["exit_code"] in (1, 2):
        typer.echo(f"error: {summary['reason']}", err=True)
    _emit(summary, as_json)
    raise typer.Exit(summary["exit_code"])


def _watch(spec, interval: float, as_json: bool, progress: bool, log) -> int:
    import signal
    import threading

    from sightwise.pipeline.runner import run_pipeline, watch

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def once() -> dict:
        summary = run_pipeline(spec, log=log, progress=progress)
        _emit(summary, as_json)
        return summary

    watch(spec, once, interval=interval, log=log, stop=stop)
    return 0


@pipeline_app.command("summary")
def summary(
    path: Annotated[str, typer.Argument(help="A summary written by `pipeline run` (--json "
                                        "output, or WORK/summary.json).")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown tables (for a CI job "
                                           "summary, e.g. $GITHUB_STEP_SUMMARY).")] = False,
) -> None:
    """Print a pipeline summary as text or Markdown (for publishing it from CI)."""
    from sightwise.pipeline.report import format_markdown, format_text, load_summary

    try:
        data = load_summary(path)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_markdown(data) if markdown else format_text(data), nl=not markdown)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
    app.add_typer(pipeline_app, name="pipeline",
                  help="CI/CD for models: a PIPELINE.toml run with content-hash caching, "
                       "gates, shadow evaluation and promotion.")
