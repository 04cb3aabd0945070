"""Registry fixtures: an isolated store per test (SIGHTWISE_HOME=tmp_path, no
MLFLOW_TRACKING_URI), fake bundles, and two real trained + exported runs per session.

A fresh MLflow SQLite store takes ~6 s of schema migrations, so one is made per session and
each test gets its own copy of the file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sw_registry_helpers",
                                               Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory) -> Path:
    from sightwise.registry.store import ensure_default_store

    home = tmp_path_factory.mktemp("mlflow_template")
    saved = {k: os.environ.get(k) for k in ("SIGHTWISE_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["SIGHTWISE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        ensure_default_store()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return home / "mlflow.db"


@pytest.fixture
def home(tmp_path, monkeypatch, _template_db) -> Path:
    """This test's own store."""
    h = tmp_path / "swhome"
    h.mkdir()
    shutil.copyfile(_template_db, h / "mlflow.db")
    monkeypatch.setenv("SIGHTWISE_HOME", str(h))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SIGHTWISE_TRACKING"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def make_bundle(tmp_path):
    """make_bundle("name", macro_f1=..., parity=..., ...) -> a fake bundle folder."""
    def make(label: str, **kwargs) -> Path:
        return helpers.fake_bundle(tmp_path / "src" / label, **kwargs)
    return make


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, run seed 0, run seed 1): linear probes at 64 px on data with its own
    train/val/test folders (the same test split for both seeds), each exported (fp32)."""
    from sightwise.config import TrainConfig
    from sightwise.export.api import export_bundle
    from sightwise.train.pipeline import run_training

    spec = importlib.util.spec_from_file_location("sw_tests_conftest",
                                                  Path(__file__).parents[1] / "conftest.py")
    top = importlib.util.module_from_spec(spec)  # tests/conftest.py: the image maker
    spec.loader.exec_module(top)
    root = tmp_path_factory.mktemp("registry_runs")
    for k, (split, n) in enumerate((("train", 8), ("val", 4), ("test", 4))):
        top.make_image_folder(root / "data" / split, {"apple": n, "banana": n, "cherry": n}, seed=k)
    runs = []
    for seed in (0, 1):
        run = root / f"run{seed}"
        run_training(TrainConfig(data=str(root / "data"), out=str(run), strategy="linear-probe",
                                 img_size=64, seed=seed, progress=False), log=lambda _m: None)
        export_bundle(run / "bundle", log=lambda _m: None)
        runs.append(run)
    return root / "data", runs[0], runs[1]
