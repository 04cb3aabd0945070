"""Command-line entry points of sightwise.label, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands.

    sightwise label POOL (--classes a,b,c | --bundle B) --out LABELS.csv [--order ...]
    sightwise data audit DATA [--bundle B] [--json] [--html out.html] [--folds K] [--review]
    sightwise data import FILE --pool POOL --out LABELS.csv [--classes ...]
    sightwise data export SOURCE --format label-studio|cvat|folder|csv --out OUT
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _serve(session, host: str, port: int, token_file: str | None) -> None:
    from sightwise.serve.auth import load_token
    from sightwise.serve.label_app import run_label_server

    try:
        run_label_server(session, host=host, port=port, token=load_token(token_file=token_file),
                         echo=_log)
    finally:
        session.store.close()
    p = session.progress()
    _log(f"{p['labelled']} labelled, {p['skipped']} skipped, {p['queued']} still queued; "
         f"answers in {session.store.path}")


Host = Annotated[str, typer.Option(help="Address to bind (loopback by default).")]
Port = Annotated[int, typer.Option(help="TCP port.")]
data_app = typer.Typer(no_args_is_help=True, add_completion=False)

TokenFile = Annotated[str | None, typer.Option("--token-file", help="File holding the bearer "
                      "token (default: $SIGHTWISE_TOKEN, else a random one printed with the URL).")]


@user_errors
def label(
    pool: Annotated[str, typer.Argument(help="Folder of images, or a labelling-queue "
                                        "folder with queue.jsonl.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Labels CSV to append to "
                                     "(created if missing; resumed if present).")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes (default: "
                                                "the bundle's).")] = None,
    bundle: Annotated[str | None, typer.Option(help="Exported bundle: its guesses are "
                      "shown and its embeddings pick the order.")] = None,
    order: Annotated[str, typer.Option(help="auto | random | kcenter | margin")] = "auto",
    host: Host = "127.0.0.1",
    port: Port = 8765,
    token_file: TokenFile = None,
    lease: Annotated[float, typer.Option(help="Seconds an image stays reserved for the "
                                         "annotator it was shown to.")] = 600.0,
    seed: Annotated[int, typer.Option(help="Seed for the random order.")] = 0,
) -> None:
    """Label images in the browser, one at a time, with the keyboard."""
    from sightwise.label.labelling import open_session, parse_classes
    from sightwise.label.pool import read_pool

    session = open_session(read_pool(pool), out, classes=parse_classes(classes),
                           bundle=bundle, order=order, lease_s=lease, seed=seed, log=_log)
    _serve(session, host, port, token_file)


@data_app.command("audit")
@user_errors
def audit(
    data: Annotated[str, typer.Argument(help="Dataset: class folders, split folders, a CSV "
                                        "manifest or a .npz file (as `train`).")],
    bundle: Annotated[str | None, typer.Option(help="Use this bundle's ONNX embeddings "
                      "instead of the ImageNet backbone (no torch needed).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    html: Annotated[str | None, typer.Option("--html", help="Write an HTML report.")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    review: Annotated[bool, typer.Option("--review", help="Then open the suspects on the "
                                         "labelling page.")] = False,
    out: Annotated[str, typer.Option("--out", "-o", help="Labels CSV for --review.")] = "review.csv",
    labels: Annotated[str, typer.Option(help="Class = top folder | leaf.")] = "top",
    seed: Annotated[int, typer.Option(help="Seed for the folds.")] = 0,
    allow_outside: Annotated[bool, typer.Option(help="Let a CSV manifest name files outside "
                                                "its own folder.")] = False,
    host: Host = "127.0.0.1",
    port: Port = 8765,
    token_file: TokenFile = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Find probable label errors, conflicting near-duplicates, leakage, outliers."""
    from sightwise.label.audit import run_audit

    if folds < 2:
        raise ValueError("--folds must be at least 2")
    result = run_audit(data, bundle=bundle, folds=folds, seed=seed, labels=labels,
                       allow_outside=allow_outside, progress=progress and not as_json, log=_log)
    if html:
        from sightwise.label.audit_html import write_audit_html

        _log(f"wrote {write_audit_html(result, html)}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        from sightwise.label.audit_html import summary_text

        typer.echo(summary_text(result))
    if review:
        from sightwise.label.labelling import open_session, review_pool

        classes = list(result["class_balance"]["counts"])
        session = open_session(review_pool(result), out, classes=classes, log=_log)
        _serve(session, host, port, token_file)


@data_app.command("import")
@user_errors
def import_(
    source: Annotated[str, typer.Argument(help="Label Studio JSON export or CVAT for "
                                          "images 1.1 XML.")],
    pool: Annotated[str, typer.Option(help="Folder holding the images it names.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Labels CSV to append to.")],
    classes: Annotated[str | None, typer.Option(help="Accept only these classes.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="label-studio | cvat "
                                            "(default: from the file name).")] = None,
) -> None:
    """Append the labels of a Label Studio or CVAT export to a labels CSV."""
    from sightwise.label.exchange import import_labels
    from sightwise.label.labelling import parse_classes

    counts = import_labels(source, pool, out, fmt=fmt, classes=parse_classes(classes))
    typer.echo(json.dumps(counts))


@data_app.command("export")
@user_errors
def export(
    source: Annotated[str, typer.Argument(help="Labels CSV, a dataset (as `train`), or "
                                          "with --unlabelled a folder of images.")],
    fmt: Annotated[str, typer.Option("--format", help="label-studio | cvat | folder | csv")],
    out: Annotated[str, typer.Option("--out", "-o", help="File (json, xml, csv) or folder.")],
    bundle: Annotated[str | None, typer.Option(help="Add this bundle's predictions "
                                               "(label-studio, cvat).")] = None,
    unlabelled: Annotated[bool, typer.Option(help="SOURCE is a folder of unlabelled "
                                             "images (for pre-annotation).")] = False,
    root: Annotated[str | None, typer.Option(help="Write image paths relative to this "
                                             "folder (default: the images' common folder).")] = None,
    image_prefix: Annotated[str, typer.Option(help="Prefix of Label Studio image "
                                              "references.")] = "/data/local-files/?d=",
) -> None:
    """Write labels for Label Studio, CVAT, a folder per class or a CSV manifest."""
    from sightwise.label.exchange import export_labels, gather, guess_format, with_predictions

    fmt = guess_format(out, fmt)
    records, classes = gather(source, unlabelled=unlabelled)
    if bundle is not None:
        records = with_predictions(records, bundle)
    typer.echo(str(export_labels(records, classes, out, fmt, root=root,
                                 image_prefix=image_prefix, log=_log)))


def register(app: typer.Typer) -> None:
    """Add `label` and the `data` sub-app (audit, import, export) to the main app."""
    app.command("label")(label)
    app.add_typer(data_app, name="data", help="Data quality and exchange: audit (label errors, "
                  "duplicates, leakage), import/export (Label Studio, CVAT, folders, CSV).")
