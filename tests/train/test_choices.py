"""What train decides by itself: ensemble size from an epoch time, image size from the
images' detail, selection between the probe and the fine-tuned model, and the record of it
all in metrics.json["choices"]. Times are simulated (no wall-clock assertions)."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sightwise.bundle import load_bundle
from sightwise.cli import app
from sightwise.config import TrainConfig
from sightwise.data.datasets import load_dataset
from sightwise.data.preprocess import Preprocessing
from sightwise.train import choices as rules
from sightwise.train.budget import Budget
from sightwise.train.choices import (
    StepTime,
    choose_image_size,
    choose_members,
    lost_detail,
    paired_comparison,
    select_candidate,
)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="-", out="-", **kw)


# -- ensemble members -------------------------------------------------------------------------


def test_an_epoch_estimate_is_its_steps_then_validation():
    # ceil(100 / 32) = 4 steps of 2 s, then 50 validation images at 10 ms
    assert StepTime(224, 32, 2.0, 0.01).epoch_seconds(100, 50) == pytest.approx(8.5)


@pytest.mark.parametrize("epoch, members, per_member", [
    # 600 s, --epochs 30: a member needs 15 planned epochs (half of 30). The plan, as fit
    # makes it: the first epoch, then what the rest holds at 1.05 x the epoch, from 10 on
    # rounded down to a multiple of 5, at most 30.
    # An epoch of 5 s: a third of 600 s holds 1 + 195 / 5.25 = 38 -> 30 each: 3 members.
    (5.0, 3, 30),
    # 10 s: a third holds 1 + 190 / 10.5 = 19 -> 15: 3 members
    (10.0, 3, 15),
    # 15 s: a third 1 + 185 / 15.75 = 12 -> 10, under 15; a half 1 + 285 / 15.75 = 19 -> 15
    (15.0, 2, 15),
    # 20 s: a half 1 + 280 / 21 = 14 -> 10, under 15: one model, 1 + 580 / 21 = 28 -> 25
    (20.0, 1, 25),
    # 58 s (the 2,300-image set): one model, 1 + 542 / 60.9 = 9
    (58.0, 1, 9),
])
def test_ensemble_size_from_a_simulated_epoch_time(epoch, members, per_member):
    choice = choose_members(_cfg(), 500, 600.0, epoch)
    assert choice["value"] == members
    assert choice["epochs_per_member"][str(members)] == per_member
    assert f"epoch ~{epoch:.1f} s" in choice["reason"]


def test_members_given_large_data_and_no_budget():
    assert choose_members(_cfg(members=4), 500, 60.0, 50.0)["value"] == 4  # --members wins
    large = choose_members(_cfg(), rules.ENSEMBLE_MAX_TRAIN + 1, math.inf, None)
    assert large["value"] == 1 and "over 2000" in large["reason"]
    assert choose_members(_cfg(), 100, math.inf, None)["value"] == rules.ENSEMBLE_MEMBERS
    # --epochs 4: 2 epochs are half the schedule; 3 members of 4 are worth their share
    assert choose_members(_cfg(epochs=4), 100, 600.0, 20.0)["value"] == 3


def _small_cache(n_per_class=12, size=32):
    from sightwise.data.cache import ImageCache

    rng = np.random.default_rng(0)
    splits = np.array(["train"] * (2 * n_per_class) + ["val"] * 8 + ["test"] * 8)
    y = np.r_[np.repeat([0, 1], n_per_class), np.tile([0, 1], 8)]
    x = rng.integers(0, 80, (len(y), size, size, 3)).astype(np.uint8)
    x[y == 1, : size // 2] += 150
    return ImageCache(images=x, labels=y, splits=splits, samples=[None] * len(y))


@pytest.mark.parametrize("step_seconds, trained", [(1.0, 3), (400.0, 1)])
def test_fine_tuning_trains_the_members_the_timed_trial_allows(tmp_path, monkeypatch,
                                                               step_seconds, trained):
    """The trial's time reaches the rule, and the rule's answer is what gets trained: 24
    training images are one step of 32, so an epoch is `step_seconds` + 8 x 0.01 s. With a
    frozen clock, 600 s stay left; --epochs 1 makes one epoch the useful count, which a
    half of 600 s cannot hold at 400 s an epoch."""
    from sightwise.train.strategies import run_strategy

    trials = []

    def timer(cfg, size, batch, num_classes):
        trials.append((size, batch))
        return StepTime(size, batch, step_seconds, 0.01)

    monkeypatch.setattr(rules, "time_training", timer)
    cfg = TrainConfig(data="-", out=str(tmp_path), strategy="scratch", epochs=1, batch_size=32,
                      progress=False)
    budget = Budget(600.0, clock=lambda: 0.0)
    t = run_strategy(cfg, Preprocessing(size=32), _small_cache(), 2, budget, lambda m: None)
    assert trials == [(32, 32)]
    choice = t.choices["members"]
    assert choice["value"] == trained == len(t.candidates["scratch"]["members"])
    assert choice["epoch_seconds"] == pytest.approx(step_seconds + 0.08)
    assert choice["trial"]["train_step_seconds"] == step_seconds


# -- image size -------------------------------------------------------------------------------


def _stripes(side: int, period: float) -> Image.Image:
    x = np.arange(side)
    row = 127.5 + 100 * np.sin(2 * np.pi * x / period)
    return Image.fromarray(np.tile(row, (side, 1)).astype(np.uint8)).convert("RGB")


def test_lost_detail_follows_the_sampling_theorem():
    """Stripes the 448 px input can show but the 224 px one cannot (a period of 6 px at
    896 px is 3 px at 448 and 1.5 px, under the 2 px limit, at 224) are lost; stripes of
    64 px survive both."""
    pre = Preprocessing(size=224)
    assert lost_detail(_stripes(896, 6), pre, 448) > 0.8
    assert lost_detail(_stripes(896, 64), pre, 448) < 0.02


def _folder(root, side: int, period: float, n=4):
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _stripes(side, period + k + 0.1 * i).save(root / name / f"{i}.png")
    return load_dataset(str(root))


def test_image_size_from_synthetic_detail(tmp_path):
    pre = Preprocessing(size=224)
    fine = _folder(tmp_path / "fine", 896, 6)
    coarse = _folder(tmp_path / "coarse", 896, 64)
    assert choose_image_size(_cfg(), pre, coarse)["value"] == 224
    big = choose_image_size(_cfg(batch_size=32), pre, fine)  # no budget: detail decides
    assert big["value"] == 448 and big["detail_lost"] > rules.DETAIL_LOST
    assert big["batch_size"] == 8  # the pixels of 32 images at 224 px
    assert choose_image_size(_cfg(img_size=160), pre, fine)["value"] == 160  # --img-size wins


def test_a_larger_input_only_when_the_budget_holds_it(tmp_path):
    """8 images: ~6 train (one step) and 1 val; the probe's features are 8 forward passes.
    A 10 s step gives 600 s room for 30 epochs; a 100 s step for 5, under half of 30."""
    pre = Preprocessing(size=224)
    fine = _folder(tmp_path / "fine", 896, 6)
    timed = []

    def timer(seconds):
        def time_it(cfg, size, batch, num_classes):
            timed.append((size, batch, num_classes))
            return StepTime(size, batch, seconds, 0.01)
        return time_it

    frozen = Budget(600.0, clock=lambda: 0.0)
    fast = choose_image_size(_cfg(), pre, fine, frozen, timer=timer(10.0))
    slow = choose_image_size(_cfg(), pre, fine, frozen, timer=timer(100.0))
    assert timed == [(448, 8, 2), (448, 8, 2)]
    assert fast["value"] == 448 and fast["epochs_at_larger"] == 30
    assert slow["value"] == 224 and slow["epochs_at_larger"] == 5
    assert "not within the budget" in slow["reason"] and slow["batch_size"] == 32


def test_small_images_are_upsampled_at_most_four_times(tmp_path):
    small = _folder(tmp_path / "small", 28, 6)
    choice = choose_image_size(_cfg(), Preprocessing(size=224), small)
    assert choice["value"] == 128 and choice["median_side"] == 28  # 4 x 28 = 112 -> 128


# -- selection --------------------------------------------------------------------------------


def _logits(pred, k=2):
    return np.eye(k)[np.asarray(pred)]


def test_mcnemar_by_hand():
    y = np.zeros(10, int)
    # item 0: only the probe is right; items 1-5: only the fine-tune; 6-9: both
    probe = _logits([0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    tuned = _logits([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    test = paired_comparison(y, probe, tuned)
    assert (test["n"], test["simple_only"], test["other_only"]) == (10, 1, 5)
    assert test["p_value"] == pytest.approx(2 * (1 + 6) / 2 ** 6)  # 2 P(X <= 1), X ~ B(6, 1/2)
    assert paired_comparison(y, probe, probe)["p_value"] == 1.0  # nothing discordant


def _kfold(lo, hi):
    return {"k": 5, "n": 500, "accuracy": (lo + hi) / 2, "accuracy_ci": [lo, hi]}


def test_selection_under_ties_keeps_the_simpler_candidate():
    y = np.zeros(40, int)
    probe = _logits([0] * 36 + [1] * 4)  # 0.90
    same = select_candidate(y, probe, probe.copy())
    assert same["value"] == "linear-probe" and same["rule"] == "simpler"
    assert "not ahead" in same["reason"]
    # the fine-tune gets 2 more right (0.95): p = 0.5, validation cannot separate them
    tuned = _logits([0] * 38 + [1] * 2)
    assert select_candidate(y, probe, tuned)["value"] == "linear-probe"  # no k-fold evidence
    # 38/40 against a k-fold accuracy of 0.93: P(X >= 38), X ~ B(40, 0.93), is ~0.46
    within = select_candidate(y, probe, tuned, simple_kfold=_kfold(0.90, 0.96))
    assert within["value"] == "linear-probe" and "nor" in within["reason"]
    assert within["kfold_test"]["p_value"] == pytest.approx(_upper_tail(38, 40, 0.93))
    # ... above the probe's interval (0.875-0.905) but not significantly: still the probe
    # (the old rule, "above the interval's upper end", took the fine-tune here)
    near = select_candidate(y, probe, tuned, simple_kfold=_kfold(0.875, 0.905))
    assert near["value"] == "linear-probe" and near["kfold_test"]["p_value"] > rules.SIGNIFICANCE
    # ... against 0.80: P(X >= 38) = 0.0079 by hand, so the fine-tune
    above = select_candidate(y, probe, tuned, simple_kfold=_kfold(0.76, 0.84))
    assert above["value"] == "finetune" and above["rule"] == "k-fold"
    assert above["kfold_test"]["p_value"] == pytest.approx(_upper_tail(38, 40, 0.80))
    assert above["kfold_test"]["p_value"] == pytest.approx(0.0079, abs=5e-4)
    assert above["kfold"]["accuracy_ci"] == [0.76, 0.84]
    assert above["validation"]["accuracy"] == {"linear-probe": 0.9, "finetune": 0.95}


def _upper_tail(k, n, p):
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_selection_when_validation_separates_them():
    y = np.zeros(40, int)
    weak, strong = _logits([0] * 30 + [1] * 10), _logits([0] * 40)  # 10 vs 0 discordant
    tuned_wins = select_candidate(y, weak, strong, simple_kfold=_kfold(0.95, 0.99))
    assert tuned_wins["value"] == "finetune" and tuned_wins["rule"] == "paired test"
    probe_wins = select_candidate(y, strong, weak)
    assert probe_wins["value"] == "linear-probe" and probe_wins["rule"] == "paired test"
    assert tuned_wins["validation"]["p_value"] < rules.SIGNIFICANCE


# -- the record in metrics.json ---------------------------------------------------------------


def test_metrics_json_records_the_choices(tmp_path, image_folder_factory, monkeypatch):
    monkeypatch.setattr(rules, "time_training",
                        lambda cfg, size, batch, nc: StepTime(size, batch, 0.5, 0.001))
    data = image_folder_factory(tmp_path / "data", {"a": 10, "b": 10})
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--no-progress",
                              "--strategy", "scratch", "--epochs", "1", "--img-size", "32",
                              "--budget", "30m"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    choices = m["choices"]
    assert choices["image_size"] == {"value": 32, "reason": "--img-size 32", "batch_size": 32}
    members = choices["members"]
    assert members["value"] == load_bundle(tmp_path / "run" / "bundle").meta.raw["model"]["members"]
    assert members["trial"] == {"size": 32, "batch_size": 32, "train_step_seconds": 0.5,
                                "eval_image_seconds": 0.001}
    assert set(members["epochs_per_member"]) == {"1", "2", "3"}
    assert f"members: {members['value']} (" in res.output  # said in the log too
    # auto on classes a probe separates: the selection says why fine-tuning was skipped
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "auto"),
                              "--no-progress", "--img-size", "32", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    auto = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert auto["strategy"]["chosen"] == "linear-probe" == auto["choices"]["selection"]["value"]
    assert auto["choices"]["selection"]["rule"] == "no fine-tuning"
    assert "perfect on validation" in auto["choices"]["selection"]["reason"]
