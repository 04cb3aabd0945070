"""BreastMNIST, official split: a shortened run in CI (the full 10-minute run is in the
README with its numbers)."""

import json

import pytest
from typer.testing import CliRunner

from sightwise.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_breastmnist_official_split_short_budget(datasets, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(datasets / "medmnist" / "breastmnist.npz"),
                                   "--out", str(out), "--budget", "2m", "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    counts = {k: sum(v.values()) for k, v in m["data"]["split_counts"].items()}
    assert counts == {"train": 546, "val": 78, "test": 156}  # the official split, untouched
    assert m["preprocessing"]["size"] == 128  # 28 px images: upsampled 4x, not to 224
    assert m["test"]["accuracy"] >= 0.80
    assert m["test"]["auroc"] >= 0.80
