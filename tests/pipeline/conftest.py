"""Pipeline fixtures: one real pipeline run per session (the Contract's minimal
PIPELINE.toml on a 3-class, 48-image folder of 16 px PNGs -- `train` sizes them to 64 px --,
linear probe), kept as a
template; each test that changes things works on its own copy (project folder, its work
folder and the model store), so a rerun of the copy starts fully cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sw_tests_conftest_pl",
                                               Path(__file__).parents[1] / "conftest.py")
_top = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_top)
make_image_folder = _top.make_image_folder

# The Contract's minimal file, as written (only the path names our fixture).
CONTRACT = """\
[data]
path = "images"        # anything `train` accepts
[train]
strategy = "linear-probe"
budget = "3m"
seed = 0
[gates]
min_accuracy = 0.95
[register]
name = "steel"
"""
CLASSES = {"apple": 16, "banana": 16, "cherry": 16}


@dataclass
class Project:
    dir: Path
    toml: Path
    home: Path

    @property
    def work(self) -> Path:
        return self.dir / ".sightwise-pipeline" / "steel"

    def edit(self, old: str, new: str) -> None:
        text = self.toml.read_text()
        assert old in text, old
        self.toml.write_text(text.replace(old, new))


def run_cli(*args: str):
    from typer.testing import CliRunner

    from sightwise.pipeline.cli import pipeline_app

    return CliRunner().invoke(pipeline_app, list(args))


@pytest.fixture
def cli():
    """cli("run", ...) -> click's Result (stdout and stderr apart)."""
    return run_cli


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """(template root, CLI result, parsed --json summary) of the first run: run from
    another working directory, so the TOML's relative path must resolve against its folder;
    tracked in MLflow."""
    root = tmp_path_factory.mktemp("pipeline_base")
    proj = root / "project"
    make_image_folder(proj / "images", CLASSES, size=16)
    (proj / "PIPELINE.toml").write_text(CONTRACT)
    saved = {k: os.environ.get(k) for k in ("SIGHTWISE_HOME", "SIGHTWISE_TRACKING", "MLFLOW_TRACKING_URI")}
    cwd = os.getcwd()
    os.environ.update(SIGHTWISE_HOME=str(root / "home"), SIGHTWISE_TRACKING="1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        os.chdir(root)
        res = run_cli("run", "project/PIPELINE.toml", "--json", "--no-progress")
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert res.exit_code == 0, (res.stdout[-3000:], res.stderr[-3000:], res.exception)
    return root, res, json.loads(res.stdout)


@pytest.fixture
def project(base_run, tmp_path, monkeypatch) -> Project:
    """A copy of the finished base run (project, work folder and store) of this test's own."""
    root = base_run[0]
    shutil.copytree(root / "project", tmp_path / "project", symlinks=True)
    shutil.copytree(root / "home", tmp_path / "home", symlinks=True)
    monkeypatch.setenv("SIGHTWISE_HOME", str(tmp_path / "home"))
    return Project(tmp_path / "project", tmp_path / "project" / "PIPELINE.toml", tmp_path / "home")
