"""Training strategies: linear-probe, finetune, scratch, and auto (probe, then fine-tune
while the budget lasts, keep the better on validation).

Fine-tuning starts from a zero head, not from the probe's: the probe's head is fitted on
standardised eval-mode features and folded into large raw-feature weights, and once
BatchNorm switches to batch statistics those weights produce huge logits (seen on
BreastMNIST: loss 6.9 in the first epoch and validation accuracy falling below the probe's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from sightwise.config import TrainConfig
from sightwise.data.cache import ImageCache
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import Classifier, build_classifier
from sightwise.train.budget import Budget
from sightwise.train.features import extract_features, frozen_extractor
from sightwise.train.finetune import evaluate_logits, fit
from sightwise.train.probe import fit_probe

# Below this share of the budget left, auto does not start fine-tuning at all.
MIN_FINETUNE_SECONDS = 20.0


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


def _split(cache: ImageCache, name: str):
    return cache.subset(name)


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
    model = new_model(cfg, num_classes, pretrained)
    lr, head_lr = learning_rates(cfg, pretrained)
    name = "finetune" if pretrained else "scratch"
    res = fit(model, cache.subset("train"), cache.subset("val"), pre, cfg, budget,
              lr=lr, head_lr=head_lr, desc=name)
    log(f"{name}: best val accuracy {res.best_val_accuracy:.4f} at epoch {res.best_epoch} "
        f"of {res.epochs_run} ({res.stopped_by}; {res.images_per_second:.1f} img/s)")
    return Trained(model=model, strategy=name,
                   val_logits=evaluate_logits(model, cache.subset("val")[0], pre),
                   test_logits=evaluate_logits(model, cache.subset("test")[0], pre),
                   train_seconds=0.0,
                   candidates={name: {"val_accuracy": res.best_val_accuracy,
                                      "epochs": res.epochs_run, "stopped_by": res.stopped_by,
                                      "images_per_second": res.images_per_second}},
                   history=res.history)


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
