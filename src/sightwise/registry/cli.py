"""`sightwise models ...`: the registry commands (mounted by sightwise.cli as "models").

Each command parses, makes one library call and prints. Refusals and bad references print
one line on stderr and exit 2; an MLflow failure exits 1.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

models_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Registered model versions: register, list, show, promote, rollback.")


def _user_errors(fn):
    """sightwise's user_errors (exit 2), plus MLflow failures as one line and exit 1."""

    @functools.wraps(fn)
    def mlflow_errors(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if getattr(exc, "error_code", None) is None:  # not an MlflowException
                raise
            typer.echo(f"error: MLflow: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(1) from None

    return user_errors(mlflow_errors)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@models_app.command()
@_user_errors
def register(
    run_or_bundle: Annotated[str, typer.Argument(help="Run folder (with bundle/) or bundle folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the version record.")] = False,
) -> None:
    """Copy a verified bundle into the store as NAME's next version."""
    from sightwise.registry.versions import register_bundle

    rec = register_bundle(run_or_bundle, name)
    if as_json:
        _echo_json(rec)
    else:
        typer.echo(f"registered {name} v{rec['version']} (parity {rec['parity']}, "
                   f"test macro-F1 {rec['metrics'].get('macro_f1', '-')})")


@models_app.command("list")
@_user_errors
def list_models(
    name: Annotated[str | None, typer.Argument(help="Model name (default: every model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Versions with their aliases, key test metrics, parity, creation time and parent;
    then each model's history of alias moves."""
    from sightwise.registry.describe import format_history, format_versions
    from sightwise.registry.promote import settled_history
    from sightwise.registry.store import mlflow_client
    from sightwise.registry.versions import list_versions

    records = list_versions(name)
    if as_json:
        _echo_json(records)
        return
    typer.echo(format_versions(records))
    client = mlflow_client()
    for model in dict.fromkeys(r["name"] for r in records):
        typer.echo("")
        typer.echo(format_history(model, settled_history(client, model)))


@models_app.command()
@_user_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest), NAME@ALIAS or NAME/VERSION.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One version's record and lineage: data, config, code, packages, parity, parent."""
    from sightwise.registry.describe import format_show, show_record

    rec = show_record(ref)
    typer.echo(json.dumps(rec, indent=2, default=str) if as_json else format_show(rec))


@models_app.command()
@_user_errors
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    force: Annotated[bool, typer.Option(help="Promote even if the gate fails (recorded).")] = False,
    tolerance: Annotated[float, typer.Option(help="Allowed drop in test macro-F1 against the "
                                             "current holder.")] = 0.01,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    require_shadow: Annotated[int | None, typer.Option(
        "--require-shadow", min=1, help="Also require at least N shadow predictions of VERSION "
        "on live traffic ($SIGHTWISE_HOME/shadow/NAME/, written by serve --shadow); reports "
        "their agreement and, on labelled requests, both models' accuracy.")] = None,
) -> None:
    """Move ALIAS to VERSION if its export parity passed and its macro-F1 is within
    TOLERANCE of the current holder's: on the same test data, or else both graphs on the
    test images neither version trained on (with the n and a 95 % interval)."""
    from sightwise.registry.promote import promote as do_promote

    shadow = None
    if require_shadow:
        from sightwise.shadowlog import shadow_summary

        shadow = shadow_summary(name, version)
    res = do_promote(name, version, alias=alias, force=force, tolerance=tolerance, reason=reason,
                     require_shadow=require_shadow, shadow=shadow)
    if res["action"] == "none":
        typer.echo(res["message"])
        return
    src = f"v{res['from']}" if res["from"] is not None else "(none)"
    typer.echo(f"{name}@{alias}: {src} -> v{res['to']}")
    for check in res["checks"]:
        if check["check"] in ("shadow", "macro-f1") and check["passed"]:
            typer.echo(f"  {check['message']}")
    if res["forced"]:
        typer.echo("FORCED past: " + "; ".join(res["overridden"]), err=True)


@models_app.command()
@_user_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
) -> None:
    """Move ALIAS back to the version that held it before the last move."""
    from sightwise.registry.promote import rollback as do_rollback

    res = do_rollback(name, alias=alias, reason=reason)
    typer.echo(f"{name}@{alias}: v{res['from']} -> v{res['to']} (rolled back)")
