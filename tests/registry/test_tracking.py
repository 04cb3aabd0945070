"""log_run records params, metrics, artifacts and tags, and never fails the run it records."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from sightwise.registry import tracking
from sightwise.registry.store import mlflow_client
from sightwise.registry.tracking import flatten_metrics, flatten_params, log_run

METRICS = {
    "test": {"n": 12, "accuracy": 0.75, "macro_f1": 0.7, "accuracy_ci": [0.5, 0.9],
             "auroc": float("nan"), "confusion_matrix": [[1, 0], [0, 1]],
             "per_class": {"a b/c": {"f1": 0.5}}},
    "val": {"n": 6, "accuracy": None},
    "data": {"manifest_sha256": "f" * 64, "split_counts": {"test": {"apple": 4}}},
    "strategy": {"chosen": "linear-probe"},
    "history": [{"epoch": 1, "loss": 0.3}],
}


def test_flatten_keeps_numeric_leaves_only():
    flat = flatten_metrics(METRICS)
    assert flat == {"test.n": 12.0, "test.accuracy": 0.75, "test.macro_f1": 0.7,
                    "test.per_class.a b/c.f1": 0.5, "val.n": 6.0,
                    "data.split_counts.test.apple": 4.0}


def test_flatten_params_cuts_long_values():
    params = flatten_params({"data": "x" * 7000, "img_size": None, "nested": {"a": [1, 2]}})
    assert len(params["data"]) == 6000 and params["img_size"] == "None"
    assert params["nested.a"] == "[1, 2]"


def _run_folder(tmp_path: Path, make_bundle) -> Path:
    import shutil

    run = tmp_path / "run-a"
    run.mkdir()
    shutil.copytree(make_bundle("b"), run / "bundle")
    (run / "report.html").write_text("<html>report</html>")
    (run / "metrics.json").write_text(json.dumps(METRICS, default=str))
    (run / "cache").mkdir()
    (run / "cache" / "images.u8").write_bytes(b"\0" * 1000)  # never an artifact
    return run


def test_log_run_records_everything(home, make_bundle, tmp_path):
    run = _run_folder(tmp_path, make_bundle)
    lines = []
    run_id = log_run("train", run, METRICS, {"seed": 3, "strategy": "linear-probe"},
                     run / "bundle", log=lines.append)
    assert run_id and lines == [f"tracked as MLflow run {run_id} (sqlite:///{home}/mlflow.db)"]
    client = mlflow_client()
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "train-run-a"
    assert r.data.params == {"seed": "3", "strategy": "linear-probe"}
    assert r.data.metrics["test.macro_f1"] == 0.7 and "test.auroc" not in r.data.metrics
    assert r.data.tags["sightwise.data_sha256"] == "f" * 64
    assert r.data.tags["sightwise.git_commit"] == "0123abc"  # from bundle.json
    assert r.data.tags["sightwise.version.sightwise"] == "0.1.0"
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == "sightwise-train"
    assert exp.artifact_location == (home / "artifacts" / "sightwise-train").as_uri()
    listed = {f.path for f in client.list_artifacts(run_id, "bundle")}
    assert listed == {"bundle/bundle.json", "bundle/manifest.csv", "bundle/model.onnx"}
    assert {f.path for f in client.list_artifacts(run_id, "report")} == {
        "report/report.html", "report/metrics.json"}
    record = json.loads((run / ".sightwise_mlflow.json").read_text())
    assert record["train"]["run_id"] == run_id


def test_benchmark_methods_are_keyed_by_name(home, tmp_path):
    result = {"methods": [{"name": "knn", "accuracy_mean": 0.8}, {"name": "cnn", "accuracy_mean": 0.9}],
              "n_images": 40}
    run_id = log_run("benchmark", tmp_path, result, {"folds": 5}, None, log=lambda _m: None)
    m = mlflow_client().get_run(run_id).data.metrics
    assert m == {"methods.knn.accuracy_mean": 0.8, "methods.cnn.accuracy_mean": 0.9,
                 "n_images": 40.0}


def test_tracking_can_be_turned_off(home, tmp_path, monkeypatch):
    monkeypatch.setenv("SIGHTWISE_TRACKING", "0")
    monkeypatch.setattr(tracking, "mlflow_client", lambda: pytest.fail("MLflow was opened"))
    lines = []
    assert log_run("train", tmp_path, METRICS, {}, None, log=lines.append) is None
    assert lines == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "nosuchscheme://x"])
def test_an_unusable_store_costs_one_warning_not_the_run(home, tmp_path, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(port=_closed_port()))
    lines = []
    t0 = time.monotonic()
    assert log_run("train", tmp_path, METRICS, {"seed": 0}, None, log=lines.append) is None
    assert time.monotonic() - t0 < 30
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking failed")
