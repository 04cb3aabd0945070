"""Command-line entry points of sightwise.synth, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

A = Annotated
Opt = typer.Option

synth_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Synthetic images for rare cases: procedural defects, a small "
                             "class-conditional GAN and its quality report.")


@synth_app.command("procedural")
@user_errors
def procedural(
    good_images: A[Path, typer.Argument(help="Folder of good images to start from.")],
    out: A[Path, Opt("--out", help="Folder to write (with --masks: images/ and masks/).")],
    kind: A[str, Opt("--kind", help="cutpaste | perlin | blend")] = "cutpaste",
    n: A[int | None, Opt("--n", help="Images to make (default: one per good image).")] = None,
    masks: A[bool, Opt("--masks", help="Write OUT/images/*.png and OUT/masks/*.png "
                       "(equal stems; mask = exactly the changed pixels).")] = False,
    seed: A[int, Opt("--seed")] = 0,
    progress: A[bool, Opt("--progress/--no-progress")] = True,
):
    """Defect-like images made from good ones (CutPaste, Perlin-shaped texture blends,
    Poisson-blended patches), each with its mask."""
    from sightwise.synth.procedural import write_procedural

    files = write_procedural(good_images, out, kind, n=n, masks=masks, seed=seed,
                             progress=progress, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {len(files)} {kind} images to {out}"
               + (" (images/ and masks/)" if masks else ""))


@synth_app.command("gan")
@user_errors
def gan(
    data: A[Path, typer.Argument(help="Labelled data as `sightwise train` reads it; the GAN "
                                 "trains on its training split only.")],
    rare: A[list[str], Opt("--class", help="Class to generate (repeat for several).")],
    out: A[Path, Opt("--out", help="Folder to write: OUT/<class>/*.png, OUT/_gan/.")],
    budget: A[str, Opt("--budget", help="Training wall-clock budget, e.g. 20m.")] = "20m",
    img_size: A[int, Opt("--img-size", help="Generated side in pixels (16, 32, 64 or 128).")] = 64,
    n: A[int, Opt("--n", help="Images to write per class.")] = 200,
    seed: A[int, Opt("--seed")] = 0,
    split_seed: A[int, Opt("--split-seed", help="As `train --split-seed`: the same training "
                           "split, so the GAN never sees validation or test images.")] = 0,
    report: A[bool, Opt("--report/--no-report", help="Write the quality report at the end.")] = True,
    threads: A[int | None, Opt("--threads")] = None,
    progress: A[bool, Opt("--progress/--no-progress")] = True,
):
    """Train a small class-conditional GAN (spectral norm, hinge loss, DiffAugment, EMA
    generator) within the budget and write samples of the rare class(es)."""
    from sightwise.config import parse_duration
    from sightwise.synth.gan import GanConfig, train_gan

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    cfg = GanConfig(img_size=img_size, budget_s=parse_duration(budget), seed=seed,
                    split_seed=split_seed, n_samples=n, progress=progress)
    info = train_gan(data, rare, out, cfg, log=lambda m: typer.echo(m, err=True))
    if report:
        from sightwise.synth.report import quality_report

        for cls in rare:
            res = quality_report(out, data, cls, split_seed=split_seed, threads=threads,
                                 log=lambda m: typer.echo(m, err=True))
            info.setdefault("quality", {})[cls] = _headline(res)
    shown = {k: v for k, v in info.items() if k not in ("train_sources", "config")}
    typer.echo(json.dumps(shown, indent=2))  # the full record: OUT/_gan/summary.json


@synth_app.command("report")
@user_errors
def report(
    generated: A[Path, typer.Argument(help="Folder of generated class folders (OUT of `synth gan`).")],
    data: A[Path, Opt("--data", help="The real labelled data the generator learnt from.")],
    rare: A[str, Opt("--class", help="Class to compare.")],
    html: A[Path | None, Opt("--html", help="Report path (default: GENERATED/_report_<class>.html).")] = None,
    split_seed: A[int, Opt("--split-seed")] = 0,
    threads: A[int | None, Opt("--threads")] = None,
):
    """Quality of generated images against the real class: KID with its interval,
    precision/recall/density/coverage, near-copies of training images; an HTML page."""
    from sightwise.synth.report import quality_report

    res = quality_report(generated, data, rare, html=html, split_seed=split_seed, threads=threads,
                         log=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(_headline(res), indent=2))


def _headline(res: dict) -> dict:
    keys = ("n_generated", "n_real", "kid", "precision", "recall", "density", "coverage",
            "near_copies", "html")
    return {k: res[k] for k in keys if k in res}


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
    app.add_typer(synth_app, name="synth")
