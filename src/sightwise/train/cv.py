"""k-fold cross-validation on the non-test images, and `train --cv K`.

The folds are stratified by class, disjoint, and together exactly the train and validation
splits: the test split is never in a fold, so the k-fold estimate and the test figure are
two separate measurements of the same procedure.

With `--cv K`, fold j is predicted by models that never saw it: each is fitted on K-2 folds
and validated (the probe's C, the fine-tune's best epoch) on the next fold, j+1 mod K, so no
fold is both chosen on and scored. The out-of-fold predictions give the k-fold estimate, with
a bootstrap interval over its n = train + val images (the test split's is over n = test).
The final model uses all non-test images: the probe is refitted on all of them at the C the
folds chose most often; fine-tuning keeps the K fold models as the members of one averaged
network (together they trained on every non-test image). `auto` compares the two on the
out-of-fold predictions of all non-test images, a far larger paired sample than validation.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from sightwise.errors import SightwiseError
from sightwise.evaluate.metrics import bootstrap_ci
from sightwise.models.classifier import average_of
from sightwise.train.finetune import evaluate_logits
from sightwise.train.probe import fit_probe

# The probe's candidate regularisation strengths, as fit_probe tries them.
PROBE_CS = (0.01, 0.03, 0.1, 0.3, 1.0)


def nontest_indices(cache) -> np.ndarray:
    """Cache positions of the train and validation images (never the test split's)."""
    return np.flatnonzero(np.asarray(cache.splits) != "test")


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint folds of positions 0..len(y)-1, each class spread over them as evenly as
    its count allows (scikit-learn's StratifiedKFold, shuffled with `seed`).

    >>> [f.tolist() for f in stratified_folds(np.array([0, 0, 0, 1, 1, 1]), 3, seed=0)]
    [[2, 4], [1, 5], [0, 3]]
    """
    if not 2 <= k <= np.bincount(y).max():
        raise SightwiseError(f"--cv {k}: no class has {k} train+val images to spread over {k} "
                             "folds; use fewer folds")
    with warnings.catch_warnings():  # a class smaller than k: some folds lack it, as they must
        warnings.filterwarnings("ignore", message="The least populated class")
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [held for _, held in skf.split(np.zeros(len(y)), y)]


def _rest(folds: list[np.ndarray], *skip: int) -> np.ndarray:
    return np.sort(np.concatenate([f for i, f in enumerate(folds) if i not in skip]))


def probe_oof(features: np.ndarray, y: np.ndarray, folds: list[np.ndarray], num_classes: int,
              *, Cs=PROBE_CS, class_weight: str | None = None, seed: int = 0
              ) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold logits of the linear probe, and the C used for each fold. One C: fold j
    is predicted by a probe fitted on all other folds. Several: C is chosen on fold j+1 and
    the probe fitted on the remaining k-2 folds."""
    logits = np.zeros((len(y), num_classes), np.float32)
    chosen = []
    for j, held in enumerate(folds):
        inner = folds[(j + 1) % len(folds)] if len(Cs) > 1 else held
        train = _rest(folds, j, (j + 1) % len(folds)) if len(Cs) > 1 else _rest(folds, j)
        if len(np.unique(y[train])) < 2:
            raise SightwiseError(f"fold {j + 1}'s training folds hold a single class; "
                                 "use fewer folds")
        res = fit_probe(features[train], y[train], features[inner], y[inner], num_classes,
                        Cs=Cs, class_weight=class_weight, seed=seed)
        logits[held] = features[held] @ res.weight.T + res.bias
        chosen.append(res.C)
    return logits, chosen


def kfold_estimate(y: np.ndarray, logits: np.ndarray, folds: list[np.ndarray], *, seed: int,
                   candidate: str) -> dict:
    """Accuracy and macro-F1 of the out-of-fold predictions over all n images, with 95 %
    bootstrap intervals (as the test split's), and each fold's accuracy."""
    pred = logits.argmax(1)
    return {"candidate": candidate, "k": len(folds), "n": int(len(y)),
            "accuracy": float((pred == y).mean()),
            "accuracy_ci": list(bootstrap_ci(y, pred, "accuracy", seed=seed)),
            "macro_f1": float(f1_score(y, pred, average="macro")),
            "macro_f1_ci": list(bootstrap_ci(y, pred, "macro_f1", seed=seed)),
            "fold_sizes": [int(len(f)) for f in folds],
            "fold_accuracy": [float((pred[f] == y[f]).mean()) for f in folds]}


def run_cv(cfg, pre, cache, num_classes, budget, log, choices: dict):
    """`train --cv K` (module docstring); returns the final model as a `Trained`."""
    from sightwise.train import choices as rules

    if cfg.cv < 3:
        raise SightwiseError("--cv needs at least 3 folds (one held out, one to validate on)")
    idx = nontest_indices(cache)
    y = cache.labels[idx]
    folds = stratified_folds(y, cfg.cv, cfg.split_seed)
    log(f"cv: {cfg.cv} stratified folds over the {len(idx)} train+val images "
        f"({', '.join(str(len(f)) for f in folds)}); the test split is in none")
    choices["cv"] = rules.record(cfg.cv, "--cv", n=int(len(idx)),
                                 fold_sizes=[int(len(f)) for f in folds])
    probe = tuned = None
    if cfg.strategy in ("auto", "linear-probe"):
        probe = _probe_cv(cfg, pre, cache, num_classes, idx, folds, log)
    skip = probe is not None and probe.kfold["accuracy"] >= 1.0
    if cfg.strategy != "linear-probe" and not skip:
        tuned = _finetune_cv(cfg, pre, cache, num_classes, idx, folds, budget, log, choices)
    if probe is None or tuned is None:
        kept = probe or tuned
        reason = (f"--strategy {cfg.strategy}" if cfg.strategy != "auto" else
                  "the probe is perfect on every fold: fine-tuning could at best tie")
        choices["selection"] = rules.record(kept.strategy, reason, rule="no comparison")
        return kept
    choice = rules.select_candidate(y, probe.val_logits, tuned.val_logits)
    choice["reason"] = choice["reason"].replace("validation images", "out-of-fold predictions")
    choices["selection"] = choice
    log(f"auto: keeping the {choice['value']} model ({choice['reason']})")
    kept = tuned if choice["value"] == "finetune" else probe
    kept.candidates = {**probe.candidates, **tuned.candidates}
    kept.history = tuned.history
    return kept


def _probe_cv(cfg, pre, cache, num_classes, idx, folds, log):
    from sightwise.train import strategies as st

    model, feats = st.frozen_features(cfg, pre, cache, num_classes)
    y = cache.labels[idx]
    weight = st.probe_class_weight(cfg, y, num_classes)
    logits, Cs = probe_oof(feats[idx], y, folds, num_classes, class_weight=weight, seed=cfg.seed)
    est = kfold_estimate(y, logits, folds, seed=cfg.seed, candidate="linear-probe")
    # The C most folds chose (ties: the smaller, more regularised one), refitted on all.
    counts = Counter(Cs)
    C = min(c for c in counts if counts[c] == max(counts.values()))
    final = fit_probe(feats[idx], y, feats[idx][:0], y[:0], num_classes, Cs=(C,),
                      class_weight=weight, seed=cfg.seed)
    test = cache.indices("test")
    log(f"linear probe: {len(folds)}-fold accuracy {est['accuracy']:.4f} "
        f"[{est['accuracy_ci'][0]:.3f}, {est['accuracy_ci'][1]:.3f}]; final C={C} on all "
        f"{len(idx)} train+val images")
    return st.Trained(model=st.probe_model(model, final), strategy="linear-probe",
                      val_logits=logits, val_labels=y,
                      test_logits=feats[test] @ final.weight.T + final.bias, train_seconds=0.0,
                      candidates={"linear-probe": {"val_accuracy": est["accuracy"], "C": C,
                                                   "fold_C": Cs, "kfold": est}},
                      kfold=est)


class FoldSets:
    """The (train, validation) arrays of each fold model: fold j's model trains on all
    folds but j and j+1 and validates on j+1. Copied from the cache when asked for, one
    fold at a time."""

    def __init__(self, cache, idx: np.ndarray, folds: list[np.ndarray]):
        self.cache, self.idx, self.folds = cache, idx, folds

    def __len__(self) -> int:
        return len(self.folds)

    def __getitem__(self, j: int):
        if not 0 <= j < len(self.folds):
            raise IndexError(j)
        k = len(self.folds)
        train = self.idx[_rest(self.folds, j, (j + 1) % k)]
        val = self.idx[self.folds[(j + 1) % k]]
        return ((self.cache.images[train], self.cache.labels[train]),
                (self.cache.images[val], self.cache.labels[val]))


def _finetune_cv(cfg, pre, cache, num_classes, idx, folds, budget, log, choices):
    from sightwise.train import choices as rules
    from sightwise.train import strategies as st

    cfg = st.train_cfg(cfg, choices)
    pretrained = cfg.strategy != "scratch"
    name = "scratch" if cfg.strategy == "scratch" else "finetune"
    k = len(folds)
    choices["members"] = rules.record(k, f"--cv {k}: the fold models are the members")
    models, infos, history = st.train_members(cfg, pre, num_classes, FoldSets(cache, idx, folds),
                                              budget, log, pretrained=pretrained, name=name)
    if len(models) < k:
        raise SightwiseError(f"--cv {k}: the budget ran out after {len(models)} of {k} fold "
                             "models; give a larger --budget or fewer folds")
    hflip = st.mirrored_views(cfg)
    y = cache.labels[idx]
    logits = np.zeros((len(idx), num_classes), np.float32)
    for j, m in enumerate(models):  # each model predicts the fold it never saw
        held = idx[folds[j]]
        logits[folds[j]] = evaluate_logits(average_of([m], hflip=hflip), cache.images[held], pre)
    est = kfold_estimate(y, logits, folds, seed=cfg.seed, candidate=name)
    final = average_of(models, hflip=hflip)
    log(f"{name}: {k}-fold accuracy {est['accuracy']:.4f} [{est['accuracy_ci'][0]:.3f}, "
        f"{est['accuracy_ci'][1]:.3f}]; the final model averages the {k} fold models")
    return st.Trained(model=final, strategy=name, val_logits=logits, val_labels=y,
                      test_logits=evaluate_logits(final, cache.subset("test")[0], pre),
                      train_seconds=0.0,
                      candidates={name: {"val_accuracy": est["accuracy"], "members": infos,
                                         "hflip": hflip, "kfold": est}},
                      history=history, kfold=est)
