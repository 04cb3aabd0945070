"""Training strategies: linear-probe, finetune, scratch, and auto (probe, then fine-tune
while the budget lasts, keep the better on validation).

On small training sets a fine-tune's test result swings by several points with the seed
alone (data order, augmentation): BreastMNIST's 546 images gave test AUC 0.843, 0.899 and
0.877 for seeds 0-2 of the same recipe. So below ENSEMBLE_MAX_TRAIN training images
fine-tuning trains ENSEMBLE_MEMBERS members on seeds seed, seed+1, ...: the first plans its
schedule in a 1/n share of the budget, the others run the same plan, and their average is
kept (`average_of`, one network to export).
Each member keeps its best validation epoch (keeping the last epoch instead gave BreastMNIST
test accuracy / AUC 0.840 / 0.882 against 0.859 / 0.916, one run each; a rerun of the
same command gave 0.846 / 0.896, so that is weak evidence). By default
each prediction is also averaged with the mirrored image's, the left-right flip the
default augmentation already treats as label-preserving. Inference then costs one
pass per member and view: `--members 1 --no-tta` gives a single pass.

Fine-tuning starts from a zero head, not from the probe's: the probe's head is fitted on
standardised eval-mode features and folded into large raw-feature weights, and once
BatchNorm switches to batch statistics those weights produce huge logits (seen on
BreastMNIST: loss 6.9 in the first epoch and validation accuracy falling below the probe's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sightwise.config import TrainConfig
from sightwise.data.cache import ImageCache
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import Classifier, average_of, build_classifier
from sightwise.train.budget import Budget
from sightwise.train.features import extract_features, frozen_extractor
from sightwise.train.finetune import evaluate_logits, fit
from sightwise.train.probe import fit_probe

# Below this many seconds of budget left, auto does not start fine-tuning (or another member).
MIN_FINETUNE_SECONDS = 20.0
ENSEMBLE_MEMBERS = 3
ENSEMBLE_MAX_TRAIN = 2000


def ensemble_size(cfg: TrainConfig, n_train: int) -> int:
    """--members when given, else ENSEMBLE_MEMBERS for small training sets, else 1."""
    if cfg.members is not None:
        return cfg.members
    return ENSEMBLE_MEMBERS if n_train <= ENSEMBLE_MAX_TRAIN else 1


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


def run_strategy(cfg: TrainConfig, pre: Preprocessing, cache: ImageCache, num_classes: int,
                 budget: Budget, log) -> Trained:
    t0 = time.perf_counter()
    if cfg.strategy == "linear-probe":
        trained = _linear_probe(cfg, pre, cache, num_classes, log)
    elif cfg.strategy in ("finetune", "scratch"):
        trained = _finetune(cfg, pre, cache, num_classes, budget, log,
                            pretrained=cfg.strategy == "finetune")
    else:
        trained = _auto(cfg, pre, cache, num_classes, budget, log)
    trained.train_seconds = time.perf_counter() - t0
    return trained


def _linear_probe(cfg, pre, cache, num_classes, log) -> Trained:
    model = build_classifier(cfg.model_name, num_classes, pretrained=True).eval()
    extractor = frozen_extractor(model.backbone, pre, n_images=len(cache.samples))
    feats = {s: extract_features(extractor, cache.subset(s)[0], pre, progress=cfg.progress,
                                 desc=f"features {s}") for s in ("train", "val", "test")}
    ys = {s: cache.subset(s)[1] for s in ("train", "val", "test")}
    counts = np.bincount(ys["train"], minlength=num_classes)
    present = counts[counts > 0]
    balanced = cfg.balance == "weighted" or (cfg.balance == "auto" and present.max() > 3 * present.min())
    probe = fit_probe(feats["train"], ys["train"], feats["val"], ys["val"], num_classes,
                      class_weight="balanced" if balanced else None, seed=cfg.seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(probe.weight))
        model.head.bias.copy_(torch.from_numpy(probe.bias))
    log(f"linear probe: C={probe.C}, val accuracy {probe.val_accuracy:.4f}")
    return Trained(model=model, strategy="linear-probe",
                   val_logits=feats["val"] @ probe.weight.T + probe.bias,
                   test_logits=feats["test"] @ probe.weight.T + probe.bias,
                   train_seconds=0.0,
                   candidates={"linear-probe": {"val_accuracy": probe.val_accuracy, "C": probe.C}})


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


def _finetune(cfg, pre, cache, num_classes, budget, log, *, pretrained: bool) -> Trained:
    lr, head_lr = learning_rates(cfg, pretrained)
    name = "finetune" if pretrained else "scratch"
    train, val = cache.subset("train"), cache.subset("val")
    n = ensemble_size(cfg, len(train[1]))
    members, infos, history = [], [], []
    epochs = cfg.epochs
    for k in range(n):
        if k and not budget.allows(MIN_FINETUNE_SECONDS):
            log(f"{name}: budget spent after {k} of {n} members")
            break
        # The first member plans its schedule in a 1/n share of the budget; the others train
        # the same number of epochs without planning again (a re-plan on a slightly slower
        # epoch could round down to another schedule): only the whole budget stops them.
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
                      "stopped_by": res.stopped_by,
                      "images_per_second": res.images_per_second})
        history += [dict(h, member=k + 1) for h in res.history]
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


def _auto(cfg, pre, cache, num_classes, budget, log) -> Trained:
    probe = _linear_probe(cfg, pre, cache, num_classes, log)
    y_val = cache.subset("val")[1]
    probe_acc = probe.candidates["linear-probe"]["val_accuracy"]
    if probe_acc >= 1.0:
        log("auto: the linear probe is perfect on validation; skipping fine-tuning")
        return probe
    if not budget.allows(MIN_FINETUNE_SECONDS):
        log("auto: budget spent after the linear probe; keeping it")
        return probe
    tuned = _finetune(cfg, pre, cache, num_classes, budget, log, pretrained=True)
    tuned.candidates.update(probe.candidates)
    ft_acc = tuned.candidates["finetune"]["val_accuracy"]
    # Ties go to the cheaper, less-fitted probe unless fine-tuning has lower val loss.
    if ft_acc > probe_acc or (ft_acc == probe_acc and _nll(tuned.val_logits, y_val)
                              < _nll(probe.val_logits, y_val)):
        log(f"auto: keeping the fine-tuned model (val {ft_acc:.4f} vs probe {probe_acc:.4f})")
        return tuned
    log(f"auto: keeping the linear probe (val {probe_acc:.4f} vs fine-tuned {ft_acc:.4f})")
    probe.candidates = tuned.candidates
    probe.history = tuned.history  # the report still shows how fine-tuning went
    return probe


def _nll(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())
