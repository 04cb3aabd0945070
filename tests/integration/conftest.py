"""Integration tests read the real datasets in ../shared/datasets (skipped when absent)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("SIGHTWISE_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch, tmp_path):
    # Integration runs must not write into the user's ~/.sightwise store.
    monkeypatch.setenv("SIGHTWISE_TRACKING", "0")
    monkeypatch.setenv("SIGHTWISE_HOME", str(tmp_path / "home"))
