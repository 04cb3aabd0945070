"""`synth gan`: a tiny budget trains, samples and reports; it learns from the training
split only; bad input is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sightwise.data.datasets import load_dataset
from sightwise.data.splits import assign_splits
from sightwise.errors import DataError
from sightwise.synth.cli import synth_app
from sightwise.synth.gan import GanConfig, diff_augment, train_gan


@pytest.fixture
def data(tmp_path, image_folder_factory):
    return image_folder_factory(tmp_path / "data", {"common": 14, "rare": 9})


def test_tiny_budget_writes_samples_grids_and_a_report(data, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "gan"
    res = CliRunner().invoke(synth_app, ["gan", str(data), "--class", "rare", "--out", str(out),
                                         "--budget", "1s", "--img-size", "16", "--n", "6",
                                         "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    files = sorted((out / "rare").glob("*.png"))
    assert len(files) == 6 and not (out / "common").exists()
    assert Image.open(files[0]).size == (16, 16)
    summary = json.loads((out / "_gan" / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["generated"] == {"rare": 6}
    assert sorted((out / "_gan").glob("grid_step*.png")) and (out / "_gan" / "losses.png").is_file()
    from safetensors.torch import load_file

    assert "fc.weight" in load_file(str(out / "_gan" / "generator_ema.safetensors"))
    page = (out / "_report_rare.html").read_text()
    assert "KID" in page and "Near-copies" in page
    quality = json.loads((out / "_report_rare.json").read_text())
    assert quality["n_generated"] == 6 and quality["kid"]["low"] <= quality["kid"]["high"]
    assert len(quality["memorisation"]) == 6


def test_the_generator_sees_the_training_split_only(data, tmp_path):
    out = tmp_path / "gan"
    summary = train_gan(data, ["rare"], out, GanConfig(img_size=16, budget_s=None, max_steps=2,
                                                       n_samples=2, progress=False), log=lambda m: None)
    ds = assign_splits(load_dataset(data), seed=0)  # the split `train` makes
    train = {s.source for s in ds.samples if s.split == "train" and ds.classes[s.label] == "rare"}
    assert set(summary["train_sources"]["rare"]) == train
    assert summary["train_images"]["rare"] == len(train) < 9


def test_unknown_class_and_too_few_images_are_one_line(data, tmp_path, image_folder_factory):
    runner = CliRunner()
    res = runner.invoke(synth_app, ["gan", str(data), "--class", "unicorn", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "'unicorn' is not in" in res.output and "common, rare" in res.output
    few = image_folder_factory(tmp_path / "few", {"a": 12, "b": 4})
    with pytest.raises(DataError, match="class 'b' has 3 training image"):
        train_gan(few, ["b"], tmp_path / "o2", GanConfig(img_size=16, max_steps=1, progress=False))


def test_diff_augment_is_differentiable_and_seeded():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    a = diff_augment(x, torch.Generator().manual_seed(1))
    b = diff_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # translation and cutout zero some pixels of a constant image; colour moves the rest
    flat = diff_augment(torch.ones(8, 3, 16, 16), torch.Generator().manual_seed(2))
    assert (flat == 0).any() and np.unique(flat.numpy().round(4)).size > 2
