"""`sightwise inspect fit|score|evaluate`: thin typer commands (datasette's `serve()` style).
Only `fit` imports torch, lazily, so scoring works where torch is absent. Expected failures
(a bad option value, an empty image folder) print one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

inspect_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Defect inspection from good images only (PatchCore).")


A = Annotated
Opt = typer.Option
Threads = A[int | None, Opt("--threads", help="onnxruntime (and, for fit, torch) threads "
                            "(default: one per core).")]


@inspect_app.command("fit")
@user_errors
def fit(
    good_images: A[Path, typer.Argument(help="Folder of defect-free images.")],
    out: A[Path, Opt("--out", help="Detector bundle folder to write.")],
    model: A[str, Opt("--model", help="Backbone whose mid-level features are compared "
                      "(see `sightwise models-available`).")] = "efficientnet_lite0",
    backbone: A[str | None, Opt("--backbone", hidden=True,
                                help="Deprecated spelling of --model.")] = None,
    img_size: A[int, Opt("--img-size", help="Side in pixels of the square the network "
                         "sees.")] = 224,
    resize: A[str, Opt("--resize", help="letterbox (keep the aspect ratio, mirror-fill the "
                       "square) | stretch")] = "letterbox",
    coreset: A[float, Opt("--coreset", help="Fraction of the memory bank kept.")] = 0.1,
    false_alarm_rate: A[float, Opt("--false-alarm-rate", help="Share of good images allowed "
                                   "to score above the threshold (far mode).")] = 0.01,
    defects: A[Path | None, Opt("--defects", help="Defect images (optional): the fit's image "
                                "AUROC; needed for --threshold-mode f1.")] = None,
    threshold_mode: A[str, Opt("--threshold-mode", help="far (from --false-alarm-rate on held-"
                               "out good images) | f1 (best F1 on --defects)")] = "far",
    holdout: A[float, Opt("--holdout", help="Good fraction held out for the threshold.")] = 0.2,
    seed: A[int, Opt("--seed", help="Seed for the hold-out split, subset and coreset.")] = 0,
    reflect_pad: A[int, Opt("--reflect-pad", help="Pixels of reflection around each image "
                            "(multiple of 8; 0: the backbone's zero padding).")] = 32,
    border: A[int, Opt("--border", help="Patches at the edge left out of the image score "
                       "(heat maps keep them).")] = 2,
    max_images: A[int | None, Opt("--max-images", help="Seeded subset of the good images.")] = None,
    synthetic: A[bool, Opt("--synthetic", help="Also train a discriminative head on synthetic "
                           "defects (procedural + feature noise, SimpleNet-style).")] = False,
    synthetic_mode: A[str, Opt("--synthetic-mode", help="combined (head + memory bank) | "
                               "head (the head alone).")] = "combined",
    threads: Threads = None,
):
    """Fit a detector on good images; threshold at the false-alarm rate on a held-out part."""
    from sightwise.anomaly.fit import FitConfig, fit_detector

    if backbone is not None:
        typer.echo("note: --backbone is deprecated; use --model (as `sightwise train` does)",
                   err=True)
        model = backbone
    cfg = FitConfig(backbone=model, img_size=img_size, resize=resize, coreset=coreset,
                    false_alarm_rate=false_alarm_rate, holdout=holdout, seed=seed,
                    threshold_mode=threshold_mode, threads=threads, max_images=max_images,
                    pad=reflect_pad, border=border,
                    synthetic=synthetic_mode if synthetic else None)
    meta = fit_detector(good_images, out, cfg, defects=defects)
    typer.echo(json.dumps({"out": str(out), "threshold": meta["threshold"],
                           "thresholds": meta["thresholds"], "metrics": meta["metrics"]}, indent=2))


@inspect_app.command("score")
@user_errors
def score(
    detector: A[Path, typer.Argument(help="Detector bundle folder.")],
    images: A[Path, typer.Argument(help="An image or a folder of images (sub-folders too), "
                                   "streamed: any number of files.")],
    out: A[Path, Opt("--out", help="Folder for overlays/, scores.csv, scores.json.")],
    engine: A[str, Opt("--engine", help="local (this machine) | ray (Ray Data; needs "
                       "sightwise[scale]).")] = "local",
    ray_address: A[str | None, Opt("--ray-address", help="Ray cluster to use (default: a "
                                   "local one sized to this machine).")] = None,
    threads: Threads = None,
    progress: A[bool, Opt(help="Show a progress bar (rate and ETA).")] = True,
):
    """Score images: verdicts, heat-map overlays, scores.csv and scores.json in --out."""
    from sightwise.anomaly.detector import Detector
    from sightwise.cli_errors import user_errors
    from sightwise.scale.inspect import score_stream

    @user_errors
    def run() -> dict:
        if engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {engine!r}")
        return score_stream(Detector(detector, threads=threads), images, out, engine=engine,
                            threads=threads, ray_address=ray_address, progress=progress)

    counts = run()
    typer.echo(f"{counts['n']} images, {counts['n_defect']} defect, results in {out}")


@inspect_app.command("evaluate")
@user_errors
def evaluate(
    detector: A[Path, typer.Argument(help="Detector bundle folder.")],
    good: A[Path, Opt("--good", help="Defect-free test images (folder links are not followed).")],
    defect: A[Path, Opt("--defect", help="Defect images (a folder of class folders is fine; "
                        "folder links are not followed).")],
    masks: A[Path | None, Opt("--masks", help="Masks mirroring --defect, same stems, .png.")] = None,
    report: A[Path | None, Opt("--report", help="Default: DETECTOR_report.html beside it.")] = None,
    as_json: A[bool, Opt("--json", help="Print only the headline figures, as one JSON line.")] = False,
    threads: Threads = None,
):
    """Image/pixel AUROC, PRO, F1 and false-alarm rate; writes an HTML report."""
    from sightwise.anomaly.evaluate import evaluate_detector

    # The report goes beside, not into, the bundle: adding files would break its hashes.
    report = report or detector.parent / f"{detector.name}_report.html"
    res = evaluate_detector(detector, good, defect, masks, report=report, threads=threads)
    if as_json:
        keys = ("image_auroc", "pixel_auroc", "pro", "false_alarm_rate", "f1", "n_good", "n_defect")
        typer.echo(json.dumps({k: res.get(k) for k in keys}))
    else:
        typer.echo(json.dumps(res, indent=2))
        typer.echo(f"report: {report}")
