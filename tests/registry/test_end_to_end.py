"""Train twice, export, track, register, promote, roll back, predict by alias; and `mlflow
ui` pointed at the store lists the tracked runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sightwise.bundle import load_bundle, sha256_path, write_bundle_meta
from sightwise.registry.cli import models_app
from sightwise.registry.resolve import resolve_bundle
from sightwise.registry.store import mlflow_client
from sightwise.registry.tracking import log_run

runner = CliRunner()


def cli(*args: str, code: int = 0):
    res = runner.invoke(models_app, list(args))
    assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
    return res


def track(run: Path) -> str:
    """What `sightwise train` does after run_training."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "bundle" / "bundle.json").read_text())["config"]
    run_id = log_run("train", run, metrics, config, run / "bundle", log=lambda _m: None)
    assert run_id
    return run_id


def altered_copy(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    meta = load_bundle(dst).meta.to_dict()
    meta.pop("files")
    change(meta)
    write_bundle_meta(dst, meta)
    return dst


def test_register_promote_rollback_and_predict_by_alias(home, two_runs, tmp_path):
    from sightwise.predict import predict_files

    data, run0, run1 = two_runs
    ids = [track(run0), track(run1)]
    metrics0 = json.loads((run0 / "metrics.json").read_text())
    logged = mlflow_client().get_run(ids[0]).data
    assert logged.metrics["test.macro_f1"] == pytest.approx(metrics0["test"]["macro_f1"])
    assert logged.tags["sightwise.data_sha256"] == metrics0["data"]["manifest_sha256"]

    assert "parts v1" in cli("register", str(run0), "--name", "parts").stdout
    assert "parts v2" in cli("register", str(run1), "--name", "parts").stdout
    cli("promote", "parts", "1")
    cli("promote", "parts", "2")
    assert "v2 -> v1 (rolled back)" in cli("rollback", "parts").stdout

    recs = json.loads(cli("list", "parts", "--json").stdout)
    assert [(r["version"], r["aliases"], r["run_id"]) for r in recs] == [
        (1, ["production"], ids[0]), (2, [], ids[1])]
    assert all(r["parity_passed"] for r in recs)
    assert recs[0]["metrics"]["macro_f1"] == pytest.approx(metrics0["test"]["macro_f1"])
    text = cli("list", "parts").stdout
    for move in ("promote  production: - -> v1", "promote  production: v1 -> v2",
                 "rollback production: v2 -> v1"):
        assert move in text

    resolved = resolve_bundle("parts@production")
    assert sha256_path(resolved / "bundle.json") == sha256_path(run0 / "bundle" / "bundle.json")
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    got, want = predict_files(str(resolved), images), predict_files(str(run0 / "bundle"), images)
    assert [(p.top[0].label, p.top[0].probability) for p in got] == \
        [(p.top[0].label, p.top[0].probability) for p in want]

    # a failed parity gate, then clearly worse metrics: refused with the reason
    failed = altered_copy(run1 / "bundle", tmp_path / "failed",
                          lambda m: m["export"].update(parity_passed=False,
                                                       failed_checks=["fp32 agreement 0.9 < 0.99"]))
    worse = altered_copy(run1 / "bundle", tmp_path / "worse",
                         lambda m: m["metrics"]["test"].update(
                             macro_f1=m["metrics"]["test"]["macro_f1"] - 0.3))
    cli("register", str(failed), "--name", "parts")
    cli("register", str(worse), "--name", "parts")
    assert "v3 failed its export parity gate: fp32 agreement" in cli(
        "promote", "parts", "3", code=2).stderr
    assert "is 0.3000 below production v1's" in cli("promote", "parts", "4", code=2).stderr
    cli("promote", "parts", "4", "--force", "--reason", "drill")
    show = json.loads(cli("show", "parts@production", "--json").stdout)
    assert show["version"] == 4 and show["history"][-1]["forced"] is True
    assert show["history"][-1]["reason"] == "drill"
    assert show["lineage"]["data"]["manifest_sha256"] == metrics0["data"]["manifest_sha256"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_mlflow_ui_lists_the_tracked_runs(home, two_runs):
    _, run0, _ = two_runs
    run_id = track(run0)
    exp_id = mlflow_client().get_run(run_id).info.experiment_id
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
         f"sqlite:///{home / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
            time.sleep(0.5)
        runs = _post(base + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert params["strategy"] == "linear-probe"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
