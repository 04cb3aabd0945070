"""Training strategies: linear-probe, finetune, scratch, and auto (probe, then fine-tune
while the budget lasts, keep the fine-tuned model only when the evidence says it is better).

Fine-tuning may train several members on seeds seed, seed+1, ... and keep their average
(`average_of`, one network to export): on small data a fine-tune's result moves by points
with the seed alone, and averaging removes much of that spread. How many members the budget
can afford is `choices.choose_members`; the first member plans its schedule in a 1/n share
of the budget, the others run the same plan. Each member keeps its best validation epoch.
By default each prediction is also averaged with the mirrored image's, the left-right flip
the default augmentation already treats as label-preserving; inference then costs one pass
per member and view (`--members 1 --no-tta`: a single pass). Why these defaults, with the
runs behind them: docs/experiments/2026-11-29-breastmnist-small-data-ensemble.md.

Fine-tuning starts from a zero head, not from the probe's: the probe's head is fitted on
standardised eval-mode features and folded into large raw-feature weights, which produce
huge logits once BatchNorm switches to batch statistics (the loss then starts far above
log(classes) and the first epochs undo the probe instead of refining it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sightwise.config import TrainConfig
from sightwise.core import is_imbalanced
from sightwise.data.cache import ImageCache
from sightwise.data.preprocess import Preprocessing
from sightwise.errors import SightwiseError
from sightwise.models.classifier import Classifier, average_of, build_classifier
from sightwise.train import choices as rules
from sightwise.train.budget import Budget
from sightwise.train.features import extract_features, frozen_extractor
from sightwise.train.finetune import evaluate_logits, fit
from sightwise.train.probe import ProbeResult, fit_probe

# Below this many seconds of budget left, auto does not start fine-tuning (or another member).
MIN_FINETUNE_SECONDS = 20.0
# Folds of the probe's k-fold estimate that auto's selection falls back on.
SELECTION_FOLDS = 5


def mirrored_views(cfg: TrainConfig) -> bool:
    """Test-time flip averaging: on unless --no-tta, or training never saw flipped images."""
    return cfg.tta and cfg.augment != "none"


@dataclass
class Trained:
    model: Classifier
    strategy: str
    val_logits: np.ndarray
    test_logits: np.ndarray
    train_seconds: float
    candidates: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    choices: dict = field(default_factory=dict)  # metrics.json["choices"]
    # The labels of val_logits when they are not the validation split's (--cv: out-of-fold)
    val_labels: np.ndarray | None = None
    kfold: dict | None = None  # the k-fold estimate of the chosen candidate (--cv)


def run_strategy(cfg: TrainConfig, pre: Preprocessing, cache: ImageCache, num_classes: int,
                 budget: Budget, log, choices: dict | None = None) -> Trained:
    """Train as `cfg.strategy` says; `choices` (what was decided before, e.g. the image
    size) is extended with what is decided here and returned on the result."""
    t0 = time.perf_counter()
    choices = {} if choices is None else choices
    if cfg.cv:
        from sightwise.train.cv import run_cv  # cv builds on this module's parts

        trained = run_cv(cfg, pre, cache, num_classes, budget, log, choices)
    elif cfg.strategy == "linear-probe":
        trained = linear_probe(cfg, pre, cache, num_classes, log).trained
    elif cfg.strategy in ("finetune", "scratch"):
        trained = _finetune(cfg, pre, cache, num_classes, budget, log, choices,
                            pretrained=cfg.strategy == "finetune")
    else:
        trained = _auto(cfg, pre, cache, num_classes, budget, log, choices)
    trained.train_seconds = time.perf_counter() - t0
    trained.choices = choices
    return trained


# -- linear probe -----------------------------------------------------------------------------


@dataclass
class ProbeRun:
    """A fitted probe and what a k-fold estimate of it needs."""

    trained: Trained
    features: np.ndarray  # every cached image's frozen features, in cache order
    probe: ProbeResult
    class_weight: str | None


def probe_class_weight(cfg: TrainConfig, y_train: np.ndarray, num_classes: int) -> str | None:
    imbalanced = is_imbalanced(np.bincount(y_train, minlength=num_classes))
    return "balanced" if cfg.balance == "weighted" or (cfg.balance == "auto" and imbalanced) else None


def frozen_features(cfg: TrainConfig, pre: Preprocessing, cache: ImageCache,
                    num_classes: int) -> tuple[Classifier, np.ndarray]:
    """The pretrained classifier and its frozen features of every cached image (one pass)."""
    model = build_classifier(cfg.model_name, num_classes, pretrained=True).eval()
    extractor = frozen_extractor(model.backbone, pre, n_images=len(cache.labels))
    return model, extract_features(extractor, cache.images, pre, progress=cfg.progress,
                                   desc="features")


def probe_model(model: Classifier, probe: ProbeResult) -> Classifier:
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(probe.weight))
        model.head.bias.copy_(torch.from_numpy(probe.bias))
    return model


def linear_probe(cfg, pre, cache, num_classes, log) -> ProbeRun:
    model, feats = frozen_features(cfg, pre, cache, num_classes)
    idx = {s: cache.indices(s) for s in ("train", "val", "test")}
    y = cache.labels
    weight = probe_class_weight(cfg, y[idx["train"]], num_classes)
    probe = fit_probe(feats[idx["train"]], y[idx["train"]], feats[idx["val"]], y[idx["val"]],
                      num_classes, class_weight=weight, seed=cfg.seed)
    log(f"linear probe: C={probe.C}, val accuracy {probe.val_accuracy:.4f}")
    trained = Trained(model=probe_model(model, probe), strategy="linear-probe",
                      val_logits=feats[idx["val"]] @ probe.weight.T + probe.bias,
                      test_logits=feats[idx["test"]] @ probe.weight.T + probe.bias,
                      train_seconds=0.0,
                      candidates={"linear-probe": {"val_accuracy": probe.val_accuracy,
                                                   "C": probe.C}})
    return ProbeRun(trained, feats, probe, weight)


# -- fine-tuning ------------------------------------------------------------------------------


SCRATCH_LR = 3e-3


def learning_rates(cfg: TrainConfig, pretrained: bool) -> tuple[float, float]:
    """(backbone lr, head lr). From scratch every weight starts random: one larger rate."""
    return (cfg.lr, cfg.head_lr) if pretrained else (SCRATCH_LR, SCRATCH_LR)


def new_model(cfg: TrainConfig, num_classes: int, pretrained: bool) -> Classifier:
    """The network a fine-tune or scratch run starts from (zero head when pretrained)."""
    model = build_classifier(cfg.model_name, num_classes, pretrained=pretrained)
    if pretrained:
        with torch.no_grad():  # a zero head: every class starts equally likely
            model.head.weight.zero_()
            model.head.bias.zero_()
    return model


def train_cfg(cfg: TrainConfig, choices: dict) -> TrainConfig:
    """`cfg` with the batch size the image-size choice set (smaller at a larger input)."""
    batch = choices.get("image_size", {}).get("batch_size")
    return replace(cfg, batch_size=batch) if batch else cfg


def choose_members(cfg, pre, num_classes, n_train, n_val, budget, log, choices) -> int:
    """`choices.choose_members` with one epoch's time measured by a few timed steps (or
    taken from the image-size trial at this size), only when the budget matters."""
    epoch = None
    needs_time = (cfg.members is None and n_train <= rules.ENSEMBLE_MAX_TRAIN
                  and budget.seconds is not None)
    if needs_time:
        trial = choices.get("image_size", {}).get("trial")
        step = (rules.StepTime(**trial) if trial and trial["size"] == pre.size
                and trial["batch_size"] == cfg.batch_size
                else rules.time_training(cfg, pre.size, cfg.batch_size, num_classes))
        epoch = step.epoch_seconds(n_train, n_val)
    choice = rules.choose_members(cfg, n_train, budget.left(), epoch)
    if epoch is not None:
        choice["trial"] = step.to_dict()
    choices["members"] = choice
    log(f"members: {choice['value']} ({choice['reason']})")
    return choice["value"]


def train_members(cfg, pre, num_classes, sets, budget, log, *, pretrained: bool, name: str):
    """Fine-tune one model per (train, val) pair in `sets`, on seeds seed, seed+1, ... The
    first plans its schedule in a 1/n share of the budget; the others train the same
    number of epochs without planning again (a re-plan on a slightly slower epoch could
    round down to another schedule): only the whole budget stops them.
    Returns (models, their records, the per-epoch history)."""
    lr, head_lr = learning_rates(cfg, pretrained)
    n = len(sets)
    members, infos, history = [], [], []
    epochs = cfg.epochs
    for k, (train, val) in enumerate(sets):
        if k and not budget.allows(MIN_FINETUNE_SECONDS):
            log(f"{name}: budget spent after {k} of {n} members")
            break
        share = Budget(None if budget.seconds is None else budget.left() / n) if k == 0 else budget
        member_cfg = replace(cfg, seed=cfg.seed + k, epochs=epochs)
        model = new_model(member_cfg, num_classes, pretrained)
        res = fit(model, train, val, pre, member_cfg, share, lr=lr, head_lr=head_lr,
                  desc=name if n == 1 else f"{name} {k + 1}/{n}", plan=k == 0)
        if k and epochs < cfg.epochs and res.stopped_by == "epochs":
            res.stopped_by = "budget"  # it ran the plan the budget set for the first member
        log(f"{name}{'' if n == 1 else f' member {k + 1}/{n}'}: best val accuracy "
            f"{res.best_val_accuracy:.4f} at epoch {res.best_epoch} of {res.epochs_run} "
            f"({res.stopped_by}; {res.images_per_second:.1f} img/s)")
        if k == 0 and 0 < res.planned_epochs < cfg.epochs:
            epochs = res.planned_epochs
            log(f"{name}: the budget holds {epochs} epochs{' per member' if n > 1 else ''} "
                f"(of --epochs {cfg.epochs}; first epoch {res.history[0]['seconds']:.1f} s)")
        members.append(model)
        infos.append({"seed": member_cfg.seed, "val_accuracy": res.best_val_accuracy,
                      "epochs": res.epochs_run, "planned_epochs": res.planned_epochs,
                      "best_epoch": res.best_epoch, "stopped_by": res.stopped_by,
                      "images_per_second": res.images_per_second})
        history += [dict(h, member=k + 1) for h in res.history]
    return members, infos, history


def _finetune(cfg, pre, cache, num_classes, budget, log, choices, *, pretrained: bool) -> Trained:
    cfg = train_cfg(cfg, choices)
    name = "finetune" if pretrained else "scratch"
    train, val = cache.subset("train"), cache.subset("val")
    n = choose_members(cfg, pre, num_classes, len(train[1]), len(val[1]), budget, log, choices)
    members, infos, history = train_members(cfg, pre, num_classes, [(train, val)] * n, budget,
                                            log, pretrained=pretrained, name=name)
    hflip = mirrored_views(cfg)
    model = average_of(members, hflip=hflip)
    val_logits = evaluate_logits(model, val[0], pre)
    val_acc = float((val_logits.argmax(1) == val[1]).mean()) if len(val[1]) else 0.0
    if model is not members[0]:
        log(f"{name}: {len(members)} member(s){' x 2 mirrored views' if hflip else ''}, "
            f"val accuracy of their average {val_acc:.4f}")
    return Trained(model=model, strategy=name,
                   val_logits=val_logits,
                   test_logits=evaluate_logits(model, cache.subset("test")[0], pre),
                   train_seconds=0.0,
                   candidates={name: {"val_accuracy": val_acc, "members": infos, "hflip": hflip}},
                   history=history)


# -- auto -------------------------------------------------------------------------------------


def _auto(cfg, pre, cache, num_classes, budget, log, choices) -> Trained:
    run = linear_probe(cfg, pre, cache, num_classes, log)
    probe = run.trained
    y_val = cache.subset("val")[1]
    if run.probe.val_accuracy >= 1.0:
        return _keep_probe(probe, choices, log, "the linear probe is perfect on validation: a "
                           "fine-tuned model could at best tie there, and ties keep the probe; "
                           "skipping fine-tuning")
    kfold = probe_kfold(cfg, cache, run, num_classes, budget, log)
    if not budget.allows(MIN_FINETUNE_SECONDS):
        return _keep_probe(probe, choices, log, "budget spent after the linear probe",
                           kfold=kfold)
    tuned = _finetune(cfg, pre, cache, num_classes, budget, log, choices, pretrained=True)
    tuned.candidates.update(probe.candidates)
    if kfold:
        tuned.candidates["linear-probe"]["kfold"] = kfold
    choice = rules.select_candidate(y_val, probe.val_logits, tuned.val_logits,
                                    simple_kfold=kfold)
    choices["selection"] = choice
    log(f"auto: keeping the {choice['value']} model ({choice['reason']})")
    if choice["value"] == "finetune":
        return tuned
    probe.candidates = tuned.candidates
    probe.history = tuned.history  # the report still shows how fine-tuning went
    return probe


def _keep_probe(probe: Trained, choices: dict, log, reason: str, kfold=None) -> Trained:
    choices["selection"] = rules.record("linear-probe", reason, rule="no fine-tuning",
                                        kfold=kfold)
    log(f"auto: {reason}")
    return probe


def probe_kfold(cfg, cache, run: ProbeRun, num_classes, budget, log) -> dict | None:
    """The probe's k-fold estimate on train+val at its chosen C (cheap: cached features),
    when the budget can spare about one more probe fit; None otherwise."""
    from sightwise.train.cv import kfold_estimate, nontest_indices, probe_oof, stratified_folds

    idx = nontest_indices(cache)
    y = cache.labels[idx]
    if np.bincount(y).max() < SELECTION_FOLDS or not budget.allows(MIN_FINETUNE_SECONDS
                                                                   + 2 * run.probe.fit_seconds):
        return None
    folds = stratified_folds(y, SELECTION_FOLDS, cfg.split_seed)
    try:
        logits, _ = probe_oof(run.features[idx], y, folds, num_classes, Cs=(run.probe.C,),
                              class_weight=run.class_weight, seed=cfg.seed)
    except SightwiseError as exc:  # too few images per class for the folds: no estimate
        log(f"linear probe: no {SELECTION_FOLDS}-fold estimate ({exc})")
        return None
    est = kfold_estimate(y, logits, folds, seed=cfg.seed, candidate="linear-probe")
    log(f"linear probe: {SELECTION_FOLDS}-fold accuracy on train+val {est['accuracy']:.4f} "
        f"[{est['accuracy_ci'][0]:.3f}, {est['accuracy_ci'][1]:.3f}] (n={len(y)}, C={run.probe.C})")
    return est
