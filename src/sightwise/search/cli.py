"""`sightwise index ...`: visual search commands (mounted by sightwise.cli as "index").

Each command parses, makes one library call and prints. `index backbone-bundle` needs torch
(sightwise.export.backbone), so sightwise.cli (which may import export) adds it to this app.
Refusals (another bundle, a missing index, bad data) print one line on stderr and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

index_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Visual search: build, update and query an embedding index; "
                        "near-duplicates and leakage; retrieval evaluation.")

Threads = Annotated[int | None, typer.Option("--threads", help="onnxruntime threads.")]
Labels = Annotated[str, typer.Option("--labels", help="none|top|leaf: class from the top "
                                     "folder or the whole folder path (or the CSV's label).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
# The earlier spelling; `train` and every other command say --no-progress.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", hidden=True,
                                     help="Deprecated: use --no-progress.")]


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _show_progress(progress: bool, quiet: bool) -> bool:
    if quiet:
        _err("note: --quiet is deprecated; use --no-progress")
    return progress and not quiet


def _say_which_embedding(meta: dict) -> None:
    from sightwise.search.embed import embedding_notes

    for line in embedding_notes(meta):
        _err(line)


@index_app.command()
@user_errors
def build(
    images: Annotated[str, typer.Argument(help="Folder (recursive), dataset or CSV manifest.")],
    bundle: Annotated[str, typer.Option("--bundle", help="Bundle: NAME@ALIAS, NAME/V or DIR.")],
    out: Annotated[str, typer.Option("--out", help="Index folder to write.")],
    kind: Annotated[str, typer.Option("--index", "--kind", help="auto|flat|hnsw|ivf|ivfpq "
                                      "(auto: by collection size, and says which).")] = "auto",
    flat_limit: Annotated[int, typer.Option("--flat-limit", help="auto: HNSW at or above "
                                            "this many images.")] = 50_000,
    m: Annotated[int, typer.Option("--hnsw-m", help="HNSW links per node.")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", help="HNSW candidates "
                                                 "kept while linking a new item.")] = 200,
    ef_search: Annotated[int, typer.Option("--ef-search", help="HNSW candidates kept while "
                                           "searching (recall against speed).")] = 128,
    nprobe: Annotated[int, typer.Option("--nprobe", help="IVF cells scanned per query.")] = 32,
    engine: Annotated[str, typer.Option("--engine", help="local (this machine) | ray (Ray "
                      "Data; needs sightwise[scale]).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to "
                           "use (default: a local one sized to this machine).")] = None,
    labels: Labels = "top", threads: Threads = None, progress: Progress = True,
    quiet: Quiet = False,
) -> None:
    """Embed every image with the bundle into a new index (streamed through a bounded
    decode pool, or Ray actors with --engine ray), and say which embedding it is."""
    from sightwise.scale.embed import build_index
    from sightwise.search.store import HnswParams, IvfParams

    index = build_index(images, bundle, out, index=kind, engine=engine, labels=labels,
                        flat_limit=flat_limit, hnsw=HnswParams(m, ef_construction, ef_search),
                        ivf=IvfParams(nprobe=nprobe), threads=threads, ray_address=ray_address,
                        progress=_show_progress(progress, quiet), log=_err)
    _say_which_embedding(index.bundle)


@index_app.command()
@user_errors
def add(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    images: Annotated[str, typer.Argument(help="Folder, dataset or CSV manifest to add.")],
    bundle: Annotated[str | None, typer.Option("--bundle", help="Defaults to the index's.")] = None,
    labels: Labels = "top", threads: Threads = None, progress: Progress = True,
    quiet: Quiet = False,
) -> None:
    """Embed and add images (files already indexed, by sha256, are skipped)."""
    from sightwise.search.api import add_images

    add_images(index, images, bundle_ref=bundle, labels=labels, threads=threads,
               progress=_show_progress(progress, quiet), log=_err)


@index_app.command()
@user_errors
def remove(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    items: Annotated[list[str], typer.Argument(help="Ids, indexed paths or folders.")],
) -> None:
    """Remove items by id, path or folder."""
    from sightwise.search.api import remove_items

    remove_items(index, items, log=_err)


@index_app.command()
@user_errors
def query(
    index: Annotated[str, typer.Argument(help="Index folder.")],
    image: Annotated[list[str], typer.Argument(help="Query image file(s).")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Matches per query.")] = 10,
    bundle: Annotated[str | None, typer.Option("--bundle", help="Defaults to the index's; "
                                               "any other bundle is refused.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the matches as JSON.")] = False,
    threads: Threads = None,
) -> None:
    """Ranked matches (similarity + metadata) for each query image."""
    from sightwise.search.api import open_index, query_paths

    idx, predictor = open_index(index, bundle, threads=threads)
    results = query_paths(idx, predictor, image, k)
    if as_json:
        typer.echo(json.dumps([{"query": q, "matches": m} for q, m in
                               zip(image, results, strict=True)], indent=2))
        return
    for q, matches in zip(image, results, strict=True):
        typer.echo(q)
        for m in matches:
            typer.echo(f"  {m['rank']:>3}  {m['similarity']:.4f}  {m.get('label') or '-':<24} "
                       f"{m['path']}")


@index_app.command()
@user_errors
def dupes(
    source: Annotated[str, typer.Argument(help="Index folder, or images to embed (--bundle).")],
    threshold: Annotated[float, typer.Option("--threshold", help="Cosine for a pair.")] = 0.95,
    bundle: Annotated[str | None, typer.Option("--bundle", help="Needed for images.")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Write JSON here (else stdout).")] = None,
    sheet: Annotated[str | None, typer.Option("--sheet", help="Contact sheet PNG.")] = None,
    labels: Labels = "top", threads: Threads = None, progress: Progress = True,
    quiet: Quiet = False,
) -> None:
    """Near-duplicate groups, and pairs that cross splits (leakage)."""
    from sightwise.search.api import index_for
    from sightwise.search.dupes import contact_sheet, find_duplicates

    idx = index_for(source, bundle, labels=labels, threads=threads,
                    progress=_show_progress(progress, quiet), log=_err)
    report = find_duplicates(idx, threshold)
    if sheet:
        contact_sheet(report["groups"], sheet)
    text = json.dumps(report, indent=2)
    if out:
        from sightwise.bundle import atomic_write_bytes

        atomic_write_bytes(Path(out), text.encode("utf-8"))
    else:
        typer.echo(text)
    _err(f"{len(report['groups'])} duplicate group(s), {len(report['leakage'])} "
         f"cross-split pair(s) at cosine >= {threshold}")


@index_app.command()
@user_errors
def evaluate(
    index: Annotated[str, typer.Argument(help="Index folder (items carry labels).")],
    queries: Annotated[str, typer.Option("--queries", help="Labelled folder or CSV manifest.")],
    labels: Labels = "top", as_json: Annotated[bool, typer.Option("--json", help="Print one "
                                                                   "JSON object.")] = False,
    threads: Threads = None, progress: Progress = True, quiet: Quiet = False,
) -> None:
    """recall@1/5/10 and mAP of label retrieval (own byte-identical copies excluded)."""
    from sightwise.search.api import open_index
    from sightwise.search.evaluate import evaluate_index

    idx, predictor = open_index(index, threads=threads)
    result = evaluate_index(idx, predictor, queries, labels=labels,
                            progress=_show_progress(progress, quiet), log=_err)
    _say_which_embedding(predictor.bundle.meta.raw)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:<20} {value:.4f}" if isinstance(value, float) else f"{key:<20} {value}")
