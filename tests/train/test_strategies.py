"""Fine-tuning as an ensemble: how many members, their seeds, their budget, their average."""

import time

import numpy as np
import pytest
import torch

from sightwise.config import TrainConfig
from sightwise.data.cache import ImageCache
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import EnsembleBackbone
from sightwise.train.budget import Budget
from sightwise.train.choices import ENSEMBLE_MAX_TRAIN, ENSEMBLE_MEMBERS, choose_members
from sightwise.train.finetune import evaluate_logits
from sightwise.train.strategies import MIN_FINETUNE_SECONDS, mirrored_views, run_strategy


def _cache(n_per_class=12, size=32) -> ImageCache:
    """Two classes told apart by the brightness of the top half, in train/val/test."""
    rng = np.random.default_rng(0)
    splits = np.array(["train"] * (2 * n_per_class) + ["val"] * 8 + ["test"] * 8)
    y = np.r_[np.repeat([0, 1], n_per_class), np.tile([0, 1], 8)]
    x = rng.integers(0, 80, (len(y), size, size, 3)).astype(np.uint8)
    x[y == 1, : size // 2] += 150
    return ImageCache(images=x, labels=y, splits=splits, samples=[None] * len(y))


def _cfg(tmp_path, **kw) -> TrainConfig:
    kw = {"epochs": 2, **kw}
    return TrainConfig(data="-", out=str(tmp_path), strategy="scratch", batch_size=8,
                       progress=False, **kw)


def test_ensemble_size_and_mirroring_rules(tmp_path):
    cfg = _cfg(tmp_path)
    unbounded = float("inf")  # no --budget: the data size alone decides
    assert choose_members(cfg, ENSEMBLE_MAX_TRAIN, unbounded, None)["value"] == ENSEMBLE_MEMBERS
    assert choose_members(cfg, ENSEMBLE_MAX_TRAIN + 1, unbounded, None)["value"] == 1
    assert choose_members(_cfg(tmp_path, members=5), 10**6, 60.0, 30.0)["value"] == 5
    assert mirrored_views(cfg)
    assert not mirrored_views(_cfg(tmp_path, tta=False))
    assert not mirrored_views(_cfg(tmp_path, augment="none"))  # never trained on mirrored images
    with pytest.raises(ValueError, match="members must be at least 1"):
        _cfg(tmp_path, members=0)


def test_members_train_on_consecutive_seeds_and_are_averaged(tmp_path):
    cache = _cache()
    pre = Preprocessing(size=32)
    log = []
    t = run_strategy(_cfg(tmp_path, members=2, seed=4), pre, cache, 2, Budget(None), log.append)
    body = t.model.backbone
    assert isinstance(body, EnsembleBackbone) and len(body.members) == 2 and body.hflip
    info = t.candidates["scratch"]
    assert [m["seed"] for m in info["members"]] == [4, 5] and info["hflip"] is True
    assert {h["member"] for h in t.history} == {1, 2}
    # the members differ (their seeds do), and the kept logits are those of the saved model
    sd = [m.state_dict() for m in body.members]
    assert not torch.equal(sd[0]["stem.0.weight"], sd[1]["stem.0.weight"])
    x_test = cache.subset("test")[0]
    np.testing.assert_allclose(t.test_logits, evaluate_logits(t.model, x_test, pre), atol=1e-5)
    assert info["val_accuracy"] == pytest.approx(
        float((t.val_logits.argmax(1) == cache.subset("val")[1]).mean()))


def test_one_member_without_tta_is_a_plain_classifier(tmp_path):
    t = run_strategy(_cfg(tmp_path, members=1, tta=False), Preprocessing(size=32), _cache(), 2,
                     Budget(None), lambda s: None)
    assert not isinstance(t.model.backbone, EnsembleBackbone)


def test_a_spent_budget_stops_adding_members(tmp_path):
    # MIN_FINETUNE_SECONDS - 5 s left: the first member gets a third of it, then no budget
    # is left for a second
    spent = Budget(60.0, start=time.perf_counter() - 65.0 + MIN_FINETUNE_SECONDS)
    log = []
    t = run_strategy(_cfg(tmp_path, members=3, epochs=30), Preprocessing(size=32), _cache(), 2,
                     spent, log.append)
    assert len(t.model.backbone.members) == 1
    assert any("budget spent after 1 of 3 members" in line for line in log)


def test_members_follow_the_first_members_budget_plan(tmp_path, monkeypatch):
    # The budget (generous here) is replaced by a plan of 2 epochs out of --epochs 4: each
    # member trains exactly 2, the first one's plan reaching the later ones, which do not
    # plan again (a re-plan on a slower epoch could round down to another schedule).
    from sightwise.train import finetune

    calls = []

    def plan(seconds_left, epoch_seconds, *, done, cap, grid=finetune.EPOCH_GRID):
        calls.append(cap)
        return 2

    monkeypatch.setattr(finetune, "plan_epochs", plan)
    log = []
    t = run_strategy(_cfg(tmp_path, members=3, epochs=4, patience=10), Preprocessing(size=32),
                     _cache(), 2, Budget(3600.0), log.append)
    members = t.candidates["scratch"]["members"]
    assert [m["planned_epochs"] for m in members] == [2, 2, 2]
    assert [m["epochs"] for m in members] == [2, 2, 2]
    assert calls == [4]  # only the first member plans; the others run its plan
    assert any("the budget holds 2 epochs per member (of --epochs 4" in line for line in log)
    assert [m["stopped_by"] for m in members] == ["budget"] * 3
    assert any("member 3/3" in line and "(budget;" in line for line in log)
