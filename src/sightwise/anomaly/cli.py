"""`sightwise inspect fit|score|evaluate`: thin typer commands (datasette's `serve()` style).
Only `fit` imports torch, lazily, so scoring works where torch is absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

inspect_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Defect inspection from good images only (PatchCore).")


A = Annotated
Opt = typer.Option


@inspect_app.command("fit")
def fit(
    good_images: A[Path, typer.Argument(help="Folder of defect-free images.")],
    out: A[Path, Opt("--out", help="Detector bundle folder to write.")],
    backbone: A[str, Opt("--backbone")] = "efficientnet_lite0",
    img_size: A[int, Opt("--img-size")] = 224,
    resize: A[str, Opt("--resize", help="letterbox (keep the aspect ratio, mirror-fill the "
                       "square) | stretch")] = "letterbox",
    coreset: A[float, Opt("--coreset", help="Fraction of the memory bank kept.")] = 0.1,
    false_alarm_rate: A[float, Opt("--false-alarm-rate")] = 0.01,
    defects: A[Path | None, Opt("--defects", help="Defect images (optional).")] = None,
    threshold_mode: A[str, Opt("--threshold-mode", help="far | f1")] = "far",
    holdout: A[float, Opt("--holdout", help="Good fraction held out for the threshold.")] = 0.2,
    seed: A[int, Opt("--seed")] = 0,
    reflect_pad: A[int, Opt("--reflect-pad", help="Pixels of reflection around each image "
                            "(multiple of 8; 0: the backbone's zero padding).")] = 32,
    border: A[int, Opt("--border", help="Patches at the edge left out of the image score "
                       "(heat maps keep them).")] = 2,
    max_images: A[int | None, Opt("--max-images", help="Seeded subset of the good images.")] = None,
    threads: A[int | None, Opt("--threads")] = None,
):
    """Fit a detector on good images; threshold at the false-alarm rate on a held-out part."""
    from sightwise.anomaly.fit import FitConfig, fit_detector

    cfg = FitConfig(backbone=backbone, img_size=img_size, resize=resize, coreset=coreset,
                    false_alarm_rate=false_alarm_rate, holdout=holdout, seed=seed,
                    threshold_mode=threshold_mode, threads=threads, max_images=max_images,
                    pad=reflect_pad, border=border)
    meta = fit_detector(good_images, out, cfg, defects=defects)
    typer.echo(json.dumps({"out": str(out), "threshold": meta["threshold"],
                           "thresholds": meta["thresholds"], "metrics": meta["metrics"]}, indent=2))


@inspect_app.command("score")
def score(
    detector: A[Path, typer.Argument(help="Detector bundle folder.")],
    images: A[Path, typer.Argument(help="An image or a folder of images (sub-folders too), "
                                   "streamed: any number of files.")],
    out: A[Path, Opt("--out", help="Folder for overlays/, scores.csv, scores.json.")],
    engine: A[str, Opt("--engine", help="local (this machine) | ray (Ray Data; needs "
                       "sightwise[scale]).")] = "local",
    ray_address: A[str | None, Opt("--ray-address", help="Ray cluster to use (default: a "
                                   "local one sized to this machine).")] = None,
    threads: A[int | None, Opt("--threads")] = None,
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
def evaluate(
    detector: A[Path, typer.Argument(help="Detector bundle folder.")],
    good: A[Path, Opt("--good", help="Defect-free test images.")],
    defect: A[Path, Opt("--defect", help="Defect images (a folder of class folders is fine).")],
    masks: A[Path | None, Opt("--masks", help="Masks mirroring --defect, same stems, .png.")] = None,
    report: A[Path | None, Opt("--report", help="Default: DETECTOR_report.html beside it.")] = None,
    as_json: A[bool, Opt("--json")] = False,
    threads: A[int | None, Opt("--threads")] = None,
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
