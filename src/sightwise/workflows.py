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


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, evaluate, bundle, export fp32 ONNX (parity-checked) and write reference.npz;
    returns the metrics (also RUN/metrics.json)."""
    from sightwise.export.api import train_and_export

    metrics = train_and_export(cfg, log=log)
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
