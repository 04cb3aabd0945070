"""The multi-stage commands as library calls: what `sightwise train` and `sightwise export`
do, in the order they do it, for the CLI, the pipeline and Python users alike.

They live above export and monitor (imports flow one way): train -> export the fp32 graph
with its parity check -> the drift reference profile (`reference.npz`) from the graph the
server will run. A bundle therefore leaves `train` ready to predict, serve and monitor.
"""

from __future__ import annotations

from pathlib import Path

from sightwise.bundle import find_bundle_dir, load_bundle
from sightwise.config import TrainConfig
from sightwise.errors import BundleError


def train(cfg: TrainConfig, log=print, *, nproc: int = 1, threads: int | None = None
          ) -> dict | None:
    """Train, evaluate, bundle, export fp32 ONNX (parity-checked) and write reference.npz;
    returns the metrics (also RUN/metrics.json).

    With `nproc` > 1 the training runs as that many DDP processes under torchrun; in a
    process torchrun started (one rank) only rank 0 goes on to export, the others return
    None."""
    from sightwise.export.api import export_trained, train_and_export
    from sightwise.train import distributed

    if distributed.under_torchrun():
        metrics = distributed.run_rank(cfg, log=log)
        if metrics is None:
            return None
    elif nproc > 1:
        metrics = distributed.launch(cfg, nproc, threads=threads, log=log)
    else:
        return _with_reference(cfg, train_and_export(cfg, log=log), log)
    return _with_reference(cfg, export_trained(Path(cfg.out), metrics, log=log,
                                               progress=cfg.progress), log)


def _with_reference(cfg: TrainConfig, metrics: dict, log) -> dict:
    add_reference(Path(cfg.out) / "bundle", log=log)
    return metrics


def export(bundle: str | Path, *, log=print, threads: int | None = None, **options) -> dict:
    """`export_bundle` (fp32, optional int8 and edge folder), then a fresh reference.npz
    (the statistics follow the graph that now serves); returns the parity record."""
    from sightwise.export.api import export_bundle

    path = find_bundle_dir(bundle)
    report = export_bundle(path, log=log, threads=threads, **options)
    add_reference(path, log=log, threads=threads)
    return report


def add_reference(bundle: str | Path, *, log=print, threads: int | None = None) -> Path | None:
    """reference.npz for drift monitoring, when the bundle has a runnable graph and a
    validation split; otherwise says why and returns None (monitoring is optional)."""
    from sightwise.errors import DataError
    from sightwise.monitor.reference import build_reference

    try:
        load_bundle(bundle).graph()
        return build_reference(bundle, threads=threads, log=log)
    except (BundleError, DataError) as exc:
        log(f"no drift reference: {exc}")
        return None
