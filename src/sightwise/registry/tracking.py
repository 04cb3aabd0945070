"""Log a finished train / export / benchmark run to MLflow.

`log_run` records the resolved config as params, the numeric leaves of the metrics as
metrics (``test.macro_f1``, ``methods.knn.accuracy_mean``), the bundle and report files as
artifacts, and tags for the data manifest sha256, git commit and package versions. It never
fails the run it records: any error becomes one warning line and ``None``.

``SIGHTWISE_TRACKING=0`` turns tracking off (nothing is imported, nothing written).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from sightwise.bundle import atomic_write_json
from sightwise.core import git_commit, package_versions
from sightwise.registry.store import (
    artifact_root,
    current_user,
    mlflow_client,
    mlflow_error_code,
    tracking_uri,
    uses_default_store,
)

RUN_RECORD = ".sightwise_mlflow.json"  # dot: never hashed into a bundle by write_bundle_meta
# Files of a run folder worth keeping next to the bundle (never the decoded-image cache).
REPORT_FILES = ("report.html", "metrics.json", "manifest.csv", "benchmark.json", "benchmark.md",
                "benchmark.png", "learning_curve.json", "learning_curve.png", "parity.json")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def tracking_enabled() -> bool:
    return os.environ.get("SIGHTWISE_TRACKING", "1").strip().lower() not in ("0", "false", "no", "off")


def log_run(kind: str, run_dir: Path, metrics: dict, config: dict, bundle_dir: Path | None,
            log=print) -> str | None:
    """Log one run to MLflow; return its run id, or None when off or when MLflow failed."""
    if not tracking_enabled():
        return None
    try:
        run_id = _log_run(kind, Path(run_dir), metrics or {}, config or {},
                          Path(bundle_dir) if bundle_dir else None)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the run it records
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        log(f"warning: MLflow tracking failed ({type(exc).__name__}: {first}); "
            f"this {kind} run is not tracked")
        return None
    log(f"tracked as MLflow run {run_id} ({tracking_uri()})")
    return run_id


def _log_run(kind: str, run_dir: Path, metrics: dict, config: dict, bundle_dir: Path | None) -> str:
    client = mlflow_client()
    meta = _read_meta(bundle_dir)
    label = run_dir.parent.name if run_dir.name == "bundle" else run_dir.name
    run = client.create_run(experiment_id(client, f"sightwise-{kind}"), run_name=f"{kind}-{label}",
                            tags=run_tags(kind, run_dir, metrics, meta, bundle_dir))
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, flatten_params(config), flatten_metrics(metrics))
        if bundle_dir is not None:
            _log_bundle(client, run_id, bundle_dir, meta)
        for name in REPORT_FILES:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name), "report")
        if (run_dir / "figures").is_dir():
            client.log_artifacts(run_id, str(run_dir / "figures"), "report/figures")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    _remember(run_dir, kind, run_id)
    return run_id


def experiment_id(client, name: str) -> str:
    """The experiment's id, created on first use; in the default store its artifacts go to
    $SIGHTWISE_HOME/artifacts (MLflow's own default is ./mlruns of the working directory)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (artifact_root() / name).as_uri() if uses_default_store() else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception as exc:
        if mlflow_error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # another process won the race
            raise
        return client.get_experiment_by_name(name).experiment_id


def flatten_metrics(obj, prefix: str = "") -> dict[str, float]:
    """Finite numeric leaves by dotted path; booleans as 0/1. Lists of dicts that carry a
    "name" (the benchmark's methods) are keyed by that name; other lists (confusion
    matrices, intervals, histories) are not scalar metrics and are left out.

    >>> flatten_metrics({"test": {"macro_f1": 0.5, "ci": [0.1, 0.9]}, "passed": True,
    ...                  "methods": [{"name": "knn", "accuracy": 0.75}]})
    {'test.macro_f1': 0.5, 'passed': 1.0, 'methods.knn.accuracy': 0.75}
    """
    out: dict[str, float] = {}
    items = obj.items() if isinstance(obj, dict) else []
    for key, value in items:
        path = f"{prefix}{_clean_key(str(key))}"
        if isinstance(value, bool):
            out[path] = float(value)
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[path] = float(value)
        elif isinstance(value, dict):
            out.update(flatten_metrics(value, path + "."))
        elif isinstance(value, list) and value and all(
                isinstance(v, dict) and "name" in v for v in value):
            for v in value:
                out.update(flatten_metrics(v, f"{path}.{_clean_key(str(v['name']))}."))
    return out


def flatten_params(obj, prefix: str = "") -> dict[str, str]:
    """Config leaves as strings by dotted path, cut to MLflow's length limit.

    >>> flatten_params({"seed": 0, "model": None, "aug": {"flip": True}})
    {'seed': '0', 'model': 'None', 'aug.flip': 'True'}
    """
    out: dict[str, str] = {}
    for key, value in (obj.items() if isinstance(obj, dict) else []):
        path = f"{prefix}{_clean_key(str(key))}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, path + "."))
        else:
            if isinstance(value, (list, tuple)):
                value = json.dumps(value, default=str)
            out[path] = str(value)[:MAX_PARAM_LEN]
    return out


def _clean_key(key: str) -> str:
    return _KEY_BAD.sub("_", key)[:200] or "_"


def run_tags(kind: str, run_dir: Path, metrics: dict, meta: dict, bundle_dir: Path | None) -> dict:
    data_sha = (metrics.get("data", {}) if isinstance(metrics.get("data"), dict) else {}).get(
        "manifest_sha256") or meta.get("data", {}).get("manifest_sha256")
    commit = meta.get("git_commit") or git_commit()
    versions = meta.get("versions") or package_versions()
    tags = {"sightwise.kind": kind, "sightwise.run_dir": str(run_dir.absolute()),
            "mlflow.source.name": f"sightwise {kind}", "mlflow.source.type": "LOCAL",
            "mlflow.user": current_user(with_host=False)}
    if bundle_dir is not None:
        tags["sightwise.bundle_dir"] = str(bundle_dir.absolute())
    if data_sha:
        tags["sightwise.data_sha256"] = str(data_sha)
    if commit:
        tags["sightwise.git_commit"] = tags["mlflow.source.git.commit"] = str(commit)
    for pkg, ver in versions.items():
        tags[f"sightwise.version.{_clean_key(pkg)}"] = str(ver)
    return tags


def _read_meta(bundle_dir: Path | None) -> dict:
    if bundle_dir is None or not (bundle_dir / "bundle.json").is_file():
        return {}
    return json.loads((bundle_dir / "bundle.json").read_text(encoding="utf-8"))


def _log_batches(client, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    p = [Param(k, v) for k, v in params.items()]
    m = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(p), 100):  # MLflow's per-request limits: 100 params,
        client.log_batch(run_id, params=p[i:i + 100])
    for i in range(0, len(m), 1000):  # 1000 metrics
        client.log_batch(run_id, metrics=m[i:i + 1000])


def _log_bundle(client, run_id: str, bundle_dir: Path, meta: dict) -> None:
    """The files bundle.json lists (and bundle.json): never hidden staging folders."""
    for name in ["bundle.json", *meta.get("files", {})]:
        path = bundle_dir / name
        if path.is_file():
            sub = Path("bundle", name).parent.as_posix()
            client.log_artifact(run_id, str(path), sub)


def _remember(run_dir: Path, kind: str, run_id: str) -> None:
    """Note the run id in the run folder so `models register RUN` links the version to it."""
    path = run_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        record[kind] = {"run_id": run_id, "tracking_uri": tracking_uri()}
        atomic_write_json(path, record)
    except (OSError, ValueError):
        pass  # the run is tracked; only the link from a later registration is lost


def recorded_runs(*folders: Path) -> dict[str, str]:
    """{kind: run id} noted by log_run in these folders for the current tracking store."""
    out: dict[str, str] = {}
    for folder in folders:
        try:
            record = json.loads((folder / RUN_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for kind, entry in record.items():
            if isinstance(entry, dict) and entry.get("tracking_uri") == tracking_uri():
                out.setdefault(kind, entry.get("run_id"))
    return out
