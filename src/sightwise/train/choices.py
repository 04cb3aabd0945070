"""What `train` decides by itself, from the data, the config and the budget, and why.

Each decision is a record, `{"value": ..., "reason": "...", <evidence>}`, logged when it is
made and saved in metrics.json["choices"]; `--img-size` and `--members` override theirs.
The rules (docs/guides/training.md, "How train decides"; measurements in
docs/experiments/2026-12-02-train-defaults.md):

- image size: the backbone's, smaller for small images, larger when the images carry detail
  at scales the default input would lose and the budget holds a useful fine-tune at the
  larger size;
- ensemble members: as many as the budget gives each at least half of --epochs;
- selection between the linear probe and the fine-tuned model: by validation only when
  validation can tell them apart, else by the probe's k-fold estimate, ties to the probe.

Choices are functions of the data, the config and measured times (a few timed training
steps), so the same inputs and the same measured times give the same choices.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from sightwise.config import TrainConfig
from sightwise.data.datasets import NPZ_SCHEME, Dataset, read_npz_image
from sightwise.data.decode import array_to_image, decode_image
from sightwise.data.preprocess import Preprocessing, resize_rgb
from sightwise.train.budget import Budget
from sightwise.train.finetune import PLAN_MARGIN, plan_epochs


def record(value, reason: str, **evidence) -> dict:
    """One choice as saved in metrics.json["choices"]."""
    return {"value": value, "reason": reason, **evidence}


# -- timing: a few training steps, measured before deciding ----------------------------------

# Steps timed after one untimed warm-up step (allocator and kernel set-up make the first slow).
TRIAL_STEPS = 2


@dataclass(frozen=True)
class StepTime:
    """Measured cost of training at one input size: an optimiser step on `batch_size`
    images, and one image's forward pass in eval mode (validation, features)."""

    size: int
    batch_size: int
    train_step_seconds: float
    eval_image_seconds: float

    def epoch_seconds(self, n_train: int, n_val: int) -> float:
        """An epoch as `fit` runs it: its steps, then validation."""
        steps = max(1, math.ceil(n_train / self.batch_size))
        return steps * self.train_step_seconds + n_val * self.eval_image_seconds

    def to_dict(self) -> dict:
        return asdict(self)


def time_training(cfg: TrainConfig, size: int, batch_size: int, num_classes: int) -> StepTime:
    """Time TRIAL_STEPS fine-tuning steps (after a warm-up step) on random input of `size`
    px, and a batch of 16 images' eval forward pass. The random generator is left as it was,
    so the trial does not change the run's weights."""
    import torch

    from sightwise.train.finetune import make_optimizer
    from sightwise.train.strategies import learning_rates, new_model

    pretrained = cfg.strategy != "scratch"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]):
        model = new_model(cfg, num_classes, pretrained).to(device)
        model = model.to(memory_format=torch.channels_last)
        lr, head_lr = learning_rates(cfg, pretrained)
        opt = make_optimizer(model, lr=lr, head_lr=head_lr, weight_decay=cfg.weight_decay)
        x = torch.randn(batch_size, 3, size, size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.arange(batch_size, device=device) % num_classes
        model.train()
        seconds = []
        for _ in range(TRIAL_STEPS + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        model.eval()
        n_eval = min(16, batch_size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x[:n_eval])
        if device.type == "cuda":
            torch.cuda.synchronize()
        eval_seconds = (time.perf_counter() - t0) / n_eval
    return StepTime(size, batch_size, float(np.mean(seconds[1:])), eval_seconds)


def epochs_in(seconds: float, epoch_seconds: float, cap: int) -> int:
    """The epochs `fit` would plan in `seconds`: its first epoch, then what the rest holds
    with the same margin and rounding (finetune.plan_epochs). 0 when not one epoch fits."""
    if seconds < epoch_seconds:
        return 0
    return plan_epochs(seconds - epoch_seconds, epoch_seconds * PLAN_MARGIN, done=1, cap=cap)


# -- ensemble members -------------------------------------------------------------------------

# The most members, and the training-set size up to which they are trained: a fine-tune's
# result swings with the seed on small data (BreastMNIST: docs/experiments/
# 2026-11-29-breastmnist-small-data-ensemble.md); on more data that spread is smaller and each
# member still costs a forward pass at inference.
ENSEMBLE_MEMBERS = 3
ENSEMBLE_MAX_TRAIN = 2000
# A member is worth its share of the budget when its planned schedule is still at least this
# fraction of --epochs (the schedule the recipe assumes; 15 of the default 30). Below it each
# member's cosine schedule is cut to under half its length, and averaging under-trained
# members does not buy back the epochs they lost; one model then gets the whole budget.
MEMBER_SHARE = 0.5


def useful_epochs(cfg: TrainConfig) -> int:
    """The fewest epochs a fine-tuned model should get: MEMBER_SHARE of --epochs."""
    return max(1, math.ceil(MEMBER_SHARE * cfg.epochs))


def choose_members(cfg: TrainConfig, n_train: int, seconds_left: float,
                   epoch_seconds: float | None) -> dict:
    """How many fine-tuned members to average. `seconds_left` is what the budget leaves for
    fine-tuning (inf: no budget), `epoch_seconds` one epoch's (measured or estimated) time.

    >>> cfg = TrainConfig(data="-", out="-")
    >>> choose_members(cfg, 546, 594.0, 7.7)["value"], choose_members(cfg, 546, 165.0, 8.0)["value"]
    (3, 1)
    """
    if cfg.members is not None:
        return record(cfg.members, f"--members {cfg.members}")
    if n_train > ENSEMBLE_MAX_TRAIN:
        return record(1, f"{n_train} training images, over {ENSEMBLE_MAX_TRAIN}: one model "
                         "(members are for small data, where the seed moves results most)",
                      n_train=n_train)
    if math.isinf(seconds_left) or epoch_seconds is None:
        return record(ENSEMBLE_MEMBERS, f"no budget: {ENSEMBLE_MEMBERS} members, each up to "
                                        f"--epochs {cfg.epochs}", n_train=n_train)
    floor = useful_epochs(cfg)
    each = {n: epochs_in(seconds_left / n, epoch_seconds, cfg.epochs)
            for n in range(1, ENSEMBLE_MEMBERS + 1)}
    n = max([k for k in each if k == 1 or each[k] >= floor])
    evidence = {"n_train": n_train, "seconds_left": round(seconds_left, 1),
                "epoch_seconds": round(epoch_seconds, 2),
                "epochs_per_member": {str(k): v for k, v in each.items()},
                "min_epochs_per_member": floor}
    alone = f"one model alone: {each[1]}"
    if n == 1:
        why = f"2 members would get {each[2]} epoch(s) each, under {floor} ({alone}): one model"
    else:
        why = f"{n} members get {each[n]} epoch(s) each, at least {floor} ({alone})"
    return record(n, f"{why}; epoch ~{epoch_seconds:.1f} s, {seconds_left:.0f} s left", **evidence)


# -- image size -------------------------------------------------------------------------------

# Upsampling beyond this factor adds compute, not information (28 px MedMNIST -> 128 px).
MAX_UPSAMPLE = 4
# A larger input is considered when the images' median side is at least DETAIL_MIN_SCALE x
# the default size, and is at most DETAIL_MAX_SCALE x it: beyond that the objects are far
# larger than in the backbone's pretraining (and a step costs over 4x more).
DETAIL_MIN_SCALE = 1.5
DETAIL_MAX_SCALE = 2
# ... and chosen when at least this share of what the larger input shows (its pixel
# variance) is lost at the default size. Photographs measured 0.002-0.04, fine textures
# 0.03-0.17, small defects in large frames 0.27-0.72 (the experiment note).
DETAIL_LOST = 0.10
DETAIL_SAMPLE = 12
# At a larger input the batch shrinks so a batch holds no more pixels than the configured
# one (the same peak memory: 224 px x 32 images is ~4.4 GB on CPU), down to this many images.
MIN_BATCH = 8


def sample_evenly(ds: Dataset, n: int) -> list:
    step = max(1, len(ds.samples) // n)
    return ds.samples[::step][:n]


def median_side(ds: Dataset, n: int = 64) -> int | None:
    """Median longer side of up to n images, read from headers only (no decoding)."""
    from sightwise.data.dicom import header_size, looks_like_dicom

    sides = []
    for s in sample_evenly(ds, n):
        try:
            if s.source.startswith(NPZ_SCHEME):
                sides.append(max(read_npz_image(s.source).shape[:2]))
            elif looks_like_dicom(b"", s.source):
                sides.append(max(header_size(s.source)))
            else:
                with Image.open(s.source) as im:
                    sides.append(max(im.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported by the decoder later
            continue
    return int(np.median(sides)) if sides else None


def lost_detail(img: Image.Image, pre: Preprocessing, larger: int) -> float:
    """Share of the `larger`-px input's variance (grey levels) that the `pre.size` input
    loses: the default input, resized up to `larger`, against the larger input itself.

    >>> flat = Image.new("RGB", (900, 900), (90, 90, 90))
    >>> lost_detail(flat, Preprocessing(size=224), 448)
    0.0
    """
    big = resize_rgb(img, replace(pre, size=larger)).astype(np.float64).mean(2)
    small = Image.fromarray(resize_rgb(img, pre))
    back = small.resize((larger, larger), Image.Resampling.BICUBIC)
    back = np.asarray(back, np.float64).mean(2)
    var = big.var()
    return float(((big - back) ** 2).mean() / var) if var > 1e-9 else 0.0


def measure_detail(ds: Dataset, pre: Preprocessing, larger: int,
                   n: int = DETAIL_SAMPLE) -> float | None:
    """Median `lost_detail` over up to n evenly spaced images (decoded safely)."""
    values = []
    for s in sample_evenly(ds, n):
        try:
            img = (array_to_image(read_npz_image(s.source)) if s.source.startswith(NPZ_SCHEME)
                   else decode_image(s.source))
        except Exception:  # noqa: BLE001 - bad files are reported when the cache is built
            continue
        values.append(lost_detail(img, pre, larger))
    return float(np.median(values)) if values else None


def scaled_batch(batch_size: int, default: int, size: int) -> int:
    """The batch holding no more pixels than `batch_size` images at `default` px."""
    return max(min(MIN_BATCH, batch_size), int(batch_size * (default / size) ** 2))


def estimate_split_sizes(ds: Dataset) -> tuple[int, int]:
    """(train, val) images before the split is made: the given splits, else 70 % / 15 %."""
    given = [s.split for s in ds.samples]
    if all(s is None for s in given):
        return round(0.70 * len(given)), round(0.15 * len(given))
    n_val = sum(s == "val" for s in given)
    n_train = sum(s in (None, "train") for s in given)
    return (n_train, n_val) if n_val else (round(n_train * 0.8), round(n_train * 0.2))


def choose_image_size(cfg: TrainConfig, pre: Preprocessing, ds: Dataset | None,
                      budget: Budget | None = None, timer=time_training) -> dict:
    """The input size (the backbone's default `pre.size` unless a rule above moves it), with
    the batch size to train it at and the evidence. `timer` times training at a size (tests
    pass a simulated one)."""
    s0 = pre.size
    if cfg.img_size:
        return record(cfg.img_size, f"--img-size {cfg.img_size}", batch_size=cfg.batch_size)
    native = median_side(ds) if ds is not None else None
    if native is None:
        return record(s0, f"the backbone's {s0} px", batch_size=cfg.batch_size)
    if native * MAX_UPSAMPLE < s0:
        size = max(64, -(-native * MAX_UPSAMPLE // 32) * 32)
        return record(size, f"small images (median side {native} px): upsampled at most "
                            f"{MAX_UPSAMPLE}x", batch_size=cfg.batch_size, median_side=native)
    larger = min(DETAIL_MAX_SCALE * s0, native // 32 * 32)
    if larger < DETAIL_MIN_SCALE * s0:
        return record(s0, f"the backbone's {s0} px (median side {native} px)",
                      batch_size=cfg.batch_size, median_side=native)
    detail = measure_detail(ds, pre, larger)
    evidence = {"median_side": native, "larger": larger, "detail_lost": detail,
                "detail_threshold": DETAIL_LOST}
    if detail is None or detail < DETAIL_LOST:
        return record(s0, f"{s0} px loses {detail or 0:.1%} of what {larger} px shows "
                          f"(under {DETAIL_LOST:.0%})", batch_size=cfg.batch_size, **evidence)
    batch = scaled_batch(cfg.batch_size, s0, larger)
    lost = f"{s0} px would lose {detail:.0%} of what {larger} px shows"
    if budget is None or budget.seconds is None:
        return record(larger, f"{lost}; no budget", batch_size=batch, **evidence)
    step = timer(cfg, larger, batch, len(ds.classes))
    # Estimated before the data is decoded and split: the probe's features (one forward pass
    # per image) first, then what is left for fine-tuning one model.
    probe = cfg.strategy in ("auto", "linear-probe")
    features = len(ds.samples) * step.eval_image_seconds if probe else 0.0
    n_train, n_val = estimate_split_sizes(ds)
    epochs = epochs_in(budget.left() - features, step.epoch_seconds(n_train, n_val), cfg.epochs)
    evidence.update(trial=step.to_dict(), epochs_at_larger=epochs,
                    features_seconds=round(features, 1))
    if cfg.strategy == "linear-probe":
        fits, what = features < budget.left(), f"its features take ~{features:.0f} s"
    else:
        fits, what = epochs >= useful_epochs(cfg), f"it holds {epochs} epochs"
    if not fits:
        return record(s0, f"{lost}, but not within the budget at {larger} px ({what}): "
                          f"keeping {s0} px", batch_size=cfg.batch_size, **evidence)
    return record(larger, f"{lost}; within the budget ({what}, batch {batch})",
                  batch_size=batch, **evidence)


# -- selection --------------------------------------------------------------------------------

# Two candidates differ on validation when a paired exact test (McNemar's, on the images
# exactly one of them gets right; Dietterich 1998) rejects "equally good" at this level.
SIGNIFICANCE = 0.05


def paired_comparison(y: np.ndarray, simple_logits: np.ndarray, other_logits: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers on the same images.

    >>> y = np.array([0, 0, 1, 1]); a = np.eye(2)[[0, 0, 1, 0]]; b = np.eye(2)[[0, 1, 1, 1]]
    >>> paired_comparison(y, a, b)
    {'n': 4, 'simple_only': 1, 'other_only': 1, 'p_value': 1.0}
    """
    from scipy.stats import binomtest

    a = simple_logits.argmax(1) == y
    b = other_logits.argmax(1) == y
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(len(y)), "simple_only": only_a, "other_only": only_b, "p_value": float(p)}


def select_candidate(y: np.ndarray, simple_logits: np.ndarray, other_logits: np.ndarray, *,
                     simple: str = "linear-probe", other: str = "finetune",
                     simple_kfold: dict | None = None) -> dict:
    """Keep `other` (the fine-tuned model) only when the evidence says it is better:

    1. the paired test on these images separates them: the better one;
    2. else `other` is ahead, and its validation accuracy is significantly above `simple`'s
       k-fold accuracy on train+val (an exact one-sided binomial test at SIGNIFICANCE: the
       validation count is the noisy number, the k-fold estimate over n = train + val the
       steady one): `other`;
    3. else `simple`: the candidates cannot be told apart, and the simpler one has less
       room to have fitted the validation set by chance.
    """
    from scipy.stats import binomtest

    test = paired_comparison(y, simple_logits, other_logits)
    acc = {simple: float((simple_logits.argmax(1) == y).mean()) if len(y) else 0.0,
           other: float((other_logits.argmax(1) == y).mean()) if len(y) else 0.0}
    evidence = {"validation": {**test, "accuracy": acc}, "kfold": simple_kfold}
    ahead = test["other_only"] > test["simple_only"]
    where = f"on {test['n']} validation images ({test['other_only']} vs {test['simple_only']} " \
            f"images only one gets right, McNemar p={test['p_value']:.2g})"
    if test["p_value"] < SIGNIFICANCE:
        best = other if ahead else simple
        return record(best, f"{best} is better {where}", rule="paired test", **evidence)
    if ahead and simple_kfold:
        right = int((other_logits.argmax(1) == y).sum())
        p_kfold = float(binomtest(right, test["n"], min(simple_kfold["accuracy"], 1.0),
                                  alternative="greater").pvalue)
        evidence["kfold_test"] = {"other_right": right, "n": test["n"],
                                  "simple_kfold_accuracy": simple_kfold["accuracy"],
                                  "p_value": p_kfold}
        versus = (f"{other}'s {right}/{test['n']} = {acc[other]:.3f} against {simple}'s "
                  f"{simple_kfold['k']}-fold {simple_kfold['accuracy']:.3f} "
                  f"(binomial p={p_kfold:.2g})")
        if p_kfold < SIGNIFICANCE:
            return record(other, f"validation cannot separate them {where}, but {versus}",
                          rule="k-fold", **evidence)
    if not ahead:
        why = f"{other} is not ahead {where}"
    elif simple_kfold:
        why = f"validation cannot separate them {where}, nor {versus}"
    else:
        why = f"validation cannot separate them {where}"
    return record(simple, f"{why}: keeping the simpler {simple}", rule="simpler", **evidence)
