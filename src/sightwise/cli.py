"""The `sightwise` command: one subcommand per stage, each parse -> config -> one call.

User errors (bad data, bad arguments, unusable bundles, a missing extra) print one line
and exit 2. Training-side commands import torch inside the command, so the base
(torch-free) install can predict, explain, serve and search exported bundles.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Annotated

import typer

from sightwise import __version__
from sightwise.cli_errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Sightwise: train, prove, export and serve image classifiers offline.")

Threads = Annotated[int | None, typer.Option(min=1, help="CPU threads (default: one per core; "
                                             "1 is faster on a machine busy with other work).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sightwise {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False
         ) -> None:
    """Sightwise: train, prove, export and serve image classifiers offline."""


def _mount() -> None:
    """Sub-apps and each package's commands (their cli.py imports only typer at module
    level; MLflow, torch and the rest load when a command runs)."""
    from sightwise.anomaly.cli import inspect_app
    from sightwise.registry.cli import models_app
    from sightwise.search.cli import index_app

    app.add_typer(models_app, name="models",
                  help="Model registry on MLflow: register, list, show, promote, rollback. "
                       "Store: $SIGHTWISE_HOME (default ~/.sightwise: mlflow.db + artifacts), "
                       "or any MLflow server by MLFLOW_TRACKING_URI.")

    @index_app.command("backbone-bundle")
    def index_backbone_bundle(
        out: Annotated[str, typer.Option("--out", help="Bundle folder to write.")],
        img_size: Annotated[int, typer.Option("--img-size", help="Input size.")] = 224,
    ) -> None:
        """Write an "embedding" bundle: ImageNet EfficientNet-Lite0 pooled features, to index
        with before (or instead of) fine-tuning on the catalogue."""
        from sightwise.export.backbone import write_backbone_bundle

        typer.echo(str(write_backbone_bundle(out, img_size=img_size)))

    app.add_typer(index_app, name="index", help="Visual search: build, add, remove, query, "
                  "dupes, evaluate (FAISS over the bundle's embeddings).")
    app.add_typer(inspect_app, name="inspect", help="Defect inspection from good images only "
                  "(PatchCore-style): fit, score, evaluate.")
    for pkg in ("serve", "monitor", "label", "privacy", "stream", "synth", "pipeline"):
        import_module(f"sightwise.{pkg}.cli").register(app)


_mount()


def _track(kind: str, run_dir: Path, metrics: dict, config: dict, bundle_dir: Path | None) -> None:
    """Log an MLflow run (never fails the command; SIGHTWISE_TRACKING=0 turns it off)."""
    from sightwise.registry.tracking import log_run

    log_run(kind, run_dir, metrics, config, bundle_dir, log=_log)


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command()
@user_errors
def train(
    data: Annotated[str, typer.Argument(help="Folder of class folders, split folders "
                                        "(train/val/test), a CSV manifest or a .npz file.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder to write.")],
    strategy: Annotated[str, typer.Option(help="auto | linear-probe | finetune | scratch")] = "auto",
    model: Annotated[str | None, typer.Option(help="Backbone (see `sightwise models-available`).")] = None,
    budget: Annotated[str | None, typer.Option(help="Wall-clock bound, e.g. 3m, 600s, 1h.")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input size (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, data order and ensemble "
                                      "members.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/val/test split the data "
                                            "does not bring itself (kept apart from --seed, so "
                                            "retrained versions are tested on the same "
                                            "images).")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum fine-tuning epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Fine-tuning batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Backbone learning rate (fine-tune).")] = 3e-4,
    patience: Annotated[int, typer.Option(help="Epochs without validation gain before "
                                          "stopping early.")] = 8,
    unfreeze: Annotated[str, typer.Option(help="all | last-N backbone stages.")] = "all",
    ema_decay: Annotated[float, typer.Option(help="Keep an exponential moving average of the "
                         "weights with this decay (e.g. 0.998) and validate it; 0 = off.")] = 0.0,
    augment: Annotated[str, typer.Option(help="default | strong | none")] = "default",
    members: Annotated[int | None, typer.Option(help="Fine-tuned models to average (default: 3 up "
                       "to 2000 training images, else 1); inference costs one pass each.")] = None,
    tta: Annotated[bool, typer.Option(help="Average each prediction with the mirrored image's "
                                      "(doubles inference cost; off with --augment none).")] = True,
    cv: Annotated[int | None, typer.Option(min=3, help="K-fold estimate on train+val; train on all.")] = None,
    balance: Annotated[str, typer.Option(help="auto (weighted loss above 3:1) | weighted | none")] = "auto",
    labels: Annotated[str, typer.Option(help="Class = top folder | leaf (whole folder path).")] = "top",
    drop_leakage: Annotated[bool, typer.Option(help="Drop files duplicated across splits.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT/bundle.")] = False,
    allow_outside: Annotated[bool, typer.Option(help="Let a CSV manifest name files outside "
                                                "its own folder.")] = False,
    require_clean: Annotated[bool, typer.Option(help="Refuse data that `sightwise privacy "
                                                "check` flags (GPS, EXIF, DICOM PHI, faces).")] = False,
    synthetic: Annotated[str | None, typer.Option(help="Folder of generated images, one folder "
                         "per class (`synth gan` OUT): added to the training split only, and "
                         "only when cross-validation on the real images says they help.")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Fine-tune data-parallel in this "
                     "many processes (torchrun + DDP; gloo on CPU, one GPU each with NCCL).")] = 1,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Train a classifier, export its ONNX graph (parity-checked against PyTorch) and write
    metrics.json, report.html and bundle/ into OUT."""
    from sightwise.config import TrainConfig, parse_duration
    from sightwise.train.distributed import under_torchrun
    from sightwise.workflows import train as train_bundle

    if not under_torchrun():  # torchrun sets each rank's threads
        _set_torch_threads(threads)
    if require_clean:
        from sightwise.privacy.check import require_clean as check_clean

        check_clean(data)
    cfg = TrainConfig(data=data, out=out, strategy=strategy, model=model,
                      budget_s=parse_duration(budget), img_size=img_size, seed=seed,
                      split_seed=split_seed, epochs=epochs, batch_size=batch_size, lr=lr,
                      patience=patience, unfreeze=unfreeze,
                      ema_decay=ema_decay, members=members, tta=tta, cv=cv,
                      augment=augment, balance=balance, labels=labels,
                      drop_leakage=drop_leakage, progress=progress, overwrite=overwrite,
                      allow_outside=allow_outside, synthetic=synthetic)
    metrics = train_bundle(cfg, log=_log, nproc=nproc, threads=threads)
    if metrics is None:
        return  # a rank other than 0: rank 0 exports, tracks and reports
    _track("train", Path(out), metrics, cfg.to_dict(), Path(out) / "bundle")
    _log(f"wrote {Path(out) / 'metrics.json'}, {Path(out) / 'report.html'}, {Path(out) / 'bundle'}")


@app.command()
@user_errors
def predict(
    bundle: Annotated[str, typer.Argument(help="Bundle folder, run folder, NAME@ALIAS or "
                                          "NAME/VERSION.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders, CSV lists (a "
                                                "path column) or glob patterns.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write one row per file to "
                   "this .csv or .parquet as batches finish (batch prediction).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders "
                         "(and let ** in a glob match any depth).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --out: "
                      "skip the files it already holds.")] = False,
    engine: Annotated[str, typer.Option(help="local (this machine) | ray (Ray Data; needs "
                      "sightwise[scale]). With --out only.")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to "
                           "use (default: start a local one sized to this machine).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per ONNX "
                          "batch.")] = 32,
    log_dir: Annotated[str | None, typer.Option("--log", help="Also append every prediction "
                       "to this prediction log (as `serve --log DIR`), so the batch is "
                       "monitored for drift.")] = None,
    keep_images: Annotated[bool, typer.Option("--keep-images", help="With --log: store the "
                           "image bytes too (for the labelling queue).")] = False,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Top-k classes with calibrated probabilities for each image (ONNX Runtime, no torch).
    With --out: batch prediction over folders, streamed, resumable (docs/guides/scale.md).
    With --log DIR: every prediction is also appended to a prediction log
    (docs/guides/monitoring.md)."""
    if keep_images and log_dir is None:
        raise ValueError("--keep-images needs --log DIR")
    if keep_images and out is not None:
        raise ValueError("--keep-images is for --log without --out (a batch job's images "
                         "are already on disk: the log records their paths)")
    if out is not None:
        _predict_to_file(bundle, images, out, log_dir=log_dir, top_k=top_k,
                         recursive=recursive, resume=resume,
                         engine=engine, ray_address=ray_address, batch_size=batch_size,
                         threads=threads, progress=progress, as_json=as_json)
        return
    if resume or engine != "local" or ray_address:
        raise ValueError("--resume, --engine and --ray-address need --out FILE")
    from sightwise.predict import predict_logged, predict_stream

    options = dict(top_k=top_k, recursive=recursive, threads=threads, batch_size=batch_size)
    stream = (predict_stream(bundle, images, **options) if log_dir is None else
              predict_logged(bundle, images, log_dir, keep_images=keep_images, **options))
    preds, failed = [], False
    for p in stream:
        failed |= p.error is not None
        if as_json:
            preds.append(_pred_dict(p))
        elif p.error:
            typer.echo(f"{p.source}: error: {p.error}")
        else:
            tops = ", ".join(f"{c.label} {c.probability:.3f}" for c in p.top)
            typer.echo(f"{p.source}: {tops}")
    if as_json:
        typer.echo(json.dumps(preds, indent=2))
    if failed:
        sys.exit(1)


def _predict_to_file(bundle: str, images: list[str], out: str, *, as_json: bool, **options) -> None:
    from sightwise.predict import predict_to_file

    summary = predict_to_file(bundle, images, out, log=_log, **options)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _log(f"wrote {summary['written']} row(s) to {out} ({summary['errors']} unreadable, "
             f"{summary['already_done']} already there; "
             f"{summary['images_per_second'] or 0:.1f} images/s, {summary['engine']} engine)")


def _pred_dict(p) -> dict:
    return {"image": p.source, "error": p.error,
            "predictions": [{"label": c.label, "probability": c.probability} for c in p.top]}


@app.command()
@user_errors
def explain(
    bundle: Annotated[str, typer.Argument(help="Bundle folder, run folder, NAME@ALIAS or "
                                          "NAME/VERSION.")],
    image: Annotated[str, typer.Argument(help="Image file.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Overlay PNG to write.")],
    class_name: Annotated[str | None, typer.Option("--class", help="Explain this class "
                                                   "instead of the predicted one.")] = None,
    threads: Threads = None,
) -> None:
    """Class activation map of the predicted (or given) class over the image, as a PNG of
    the image's own size."""
    from sightwise.explain import explain_image

    label, prob = explain_image(bundle, image, out, class_name=class_name, threads=threads)
    typer.echo(f"{image}: {label} (p={prob:.3f}) -> {out}")


@app.command()
@user_errors
def info(
    bundle: Annotated[str, typer.Argument(help="Bundle folder, run folder, NAME@ALIAS or "
                                          "NAME/VERSION.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What a bundle is: task, classes, model, input, calibration, test metrics, which
    graphs may run, files (every file's sha256 is verified first)."""
    from sightwise.describe import bundle_summary, format_summary
    from sightwise.registry.resolve import open_bundle

    summary = bundle_summary(open_bundle(bundle))
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@app.command()
@user_errors
def export(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or run folder.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx "
                                       "(static QDQ, per-channel).")] = False,
    calib: Annotated[str | None, typer.Option(help="Calibration images (default: the "
                                              "bundle's training split).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    force: Annotated[bool, typer.Option(help="Keep the export even if the parity gate "
                                        "fails (the bundle stays marked).")] = False,
    edge: Annotated[str | None, typer.Option(help="Also write a self-contained edge "
                                             "folder here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the parity record as JSON.")] = False,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Export to ONNX (fp32, optionally int8), check parity against PyTorch, write parity.json.
    (`train` already exports fp32; run this for int8, an edge folder, or an older bundle.)"""
    from sightwise.bundle import find_bundle_dir
    from sightwise.workflows import export as export_bundle

    path = find_bundle_dir(bundle)
    parity = export_bundle(path, int8=int8, calib=calib, opset=opset, force=force,
                           edge_dir=edge, threads=threads, log=_log, progress=progress)
    _track("export", path, parity, {"int8": int8, "calib": calib, "opset": opset,
                                    "force": force, "edge": edge}, path)
    if not parity["passed"]:
        _log("warning: parity gate failed; export kept because of --force")
    if as_json:
        typer.echo(json.dumps(parity, indent=2))
    else:
        typer.echo(f"exported {path}: parity {'passed' if parity['passed'] else 'FAILED'} on "
                   f"{parity['n']} {parity['split']} images (details: {path / 'parity.json'})")


@app.command()
@user_errors
def benchmark(
    data: Annotated[str, typer.Argument(help="Dataset (any form `train` reads).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for benchmark.json/.md/.png.")],
    folds: Annotated[int, typer.Option(help="Stratified folds (ignored when the data has "
                                       "its own split).")] = 5,
    quick: Annotated[bool, typer.Option(help="Fewer folds, smaller images, short CNN "
                                        "budgets: minutes, not half an hour.")] = False,
    learning_curve: Annotated[bool, typer.Option(help="Also accuracy vs labels per class "
                                                 "(5, 10, 25, 50, all).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for folds and subsets.")] = 0,
    cnn_budget: Annotated[str | None, typer.Option(help="Wall-clock budget of each CNN per "
                          "fold, e.g. 4m (default: what the ~25-minute plan leaves).")] = None,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Deep learning vs traditional methods (k-NN, HOG+SVM) on the same splits."""
    from sightwise.baselines.benchmark import run_benchmark
    from sightwise.config import parse_duration

    result = run_benchmark(data, out, folds=folds, quick=quick, learning_curve=learning_curve,
                           seed=seed, cnn_budget_s=parse_duration(cnn_budget), threads=threads,
                           progress=progress, log=_log)
    _track("benchmark", Path(out), result, {"data": data, "folds": folds, "quick": quick,
                                            "learning_curve": learning_curve, "seed": seed,
                                            "cnn_budget": cnn_budget}, None)
    typer.echo((Path(out) / "benchmark.md").read_text())


@app.command()
@user_errors
def demo(
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder (replaced if it holds "
                                     "an earlier demo).")] = "runs/demo",
    budget: Annotated[str, typer.Option(help="Training budget.")] = "3m",
    progress: Progress = True,
) -> None:
    """End to end on data that ships with scikit-image: make texture tiles, train, export,
    report."""
    from sightwise.config import TrainConfig, parse_duration
    from sightwise.data.demo import make_texture_dataset
    from sightwise.workflows import train as train_bundle

    data = make_texture_dataset(Path(out) / "data")
    _log(f"made a 6-class texture dataset in {data}")
    cfg = TrainConfig(data=str(data), out=out, budget_s=parse_duration(budget), img_size=128,
                      progress=progress, overwrite=True)
    metrics = train_bundle(cfg, log=_log)
    _track("train", Path(out), metrics, cfg.to_dict(), Path(out) / "bundle")
    _log(f"open {Path(out) / 'report.html'}; try: sightwise predict {Path(out) / 'bundle'} "
         f"{data / 'brick' / 'brick_000.png'}")


@app.command("models-available")
@user_errors
def models_available() -> None:
    """List the backbones this installation can build."""
    from sightwise.models.registry import list_backbones

    for spec in list_backbones():
        w = "ImageNet weights" if spec.has_pretrained else "from scratch only"
        typer.echo(f"{spec.name:20s} {w:18s} {spec.preprocessing.size}px  {spec.description}")


if __name__ == "__main__":  # pragma: no cover
    app()
