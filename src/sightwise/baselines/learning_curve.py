"""How many labels does each method need? Accuracy against labelled images per class.

One split (the benchmark's first fold) and its test set; the labelled images are seeded
subsets of that fold's training part with exactly n images per class, nested (the 10 per
class contain the 5), so the curve shows the effect of more labels and not of a different
draw. The n labelled images are all a method gets: its validation part (k, C and gamma
choice, early stopping) is carved from them, as a user with n labels per class would
have to. The last point, "all", is the benchmark's own fold, reused rather than rerun.

>>> labels = np.repeat([0, 1], 6)
>>> subsets = labelled_subsets(np.arange(12), labels, (2, 4, 10), seed=0)
>>> sorted(subsets), [np.bincount(labels[s]).tolist() for s in subsets.values()]
([2, 4], [[2, 2], [4, 4]])
>>> bool(np.isin(subsets[2], subsets[4]).all())
True
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from sightwise.baselines.benchmark import Context, Fold, carve_val, run_method
from sightwise.bundle import atomic_write_json
from sightwise.evaluate.metrics import bootstrap_ci

LC_SIZES = (5, 10, 25, 50)
LC_METHODS = ("hog_svm", "linear_probe", "finetune")
# With 5 labels per class this leaves 4 to train on and 1 to validate, per class.
LC_VAL_FRACTION = 0.2


def labelled_subsets(pool: np.ndarray, labels: np.ndarray, ns, seed: int) -> dict[int, np.ndarray]:
    """Sorted positions, exactly ``n`` per class, for each ``n`` in ``ns`` that every class
    of ``pool`` can supply; nested because each class takes a prefix of one seeded order."""
    order = np.random.default_rng(seed).permutation(np.asarray(pool))
    per_class = [order[labels[order] == c] for c in np.unique(labels[order])]
    smallest = min(len(p) for p in per_class)
    return {int(n): np.sort(np.concatenate([p[:n] for p in per_class]))
            for n in ns if n <= smallest}


def _scores(y_test: np.ndarray, y_pred: np.ndarray, train_s: float, seed: int) -> dict:
    return {"accuracy": float(accuracy_score(y_test, y_pred)),
            "accuracy_ci": list(bootstrap_ci(y_test, y_pred, "accuracy", seed=seed)),
            "macro_f1": float(f1_score(y_test, y_pred, average="macro", zero_division=0)),
            "train_seconds": float(train_s)}


def _all_point(pool: np.ndarray, fold_record: dict, n_classes: int, seed: int) -> dict:
    """The benchmark's fold itself: every label of the training part."""
    y_test = np.asarray(fold_record["y_test"])
    methods = {m: _scores(y_test, np.asarray(fold_record["methods"][m]["y_pred"]),
                          fold_record["methods"][m]["train_seconds"], seed) for m in LC_METHODS}
    return {"n_per_class": "all", "labels_per_class": len(pool) / n_classes,
            "n_train": fold_record["n_train"], "n_val": fold_record["n_val"],
            "indices": pool.tolist(), "methods": methods}


def run_learning_curve(ctx: Context, fold: Fold, fold_record: dict, out: Path, *,
                       ns=LC_SIZES, budget_s: float | None = None, log=print) -> dict:
    """Rerun hog_svm, linear_probe and finetune on nested label subsets of ``fold``.

    ``fold_record`` is the benchmark's per-fold record of ``fold``; its results are the
    "all" point and its fine-tuning budget is reused unless ``budget_s`` is given.
    Writes learning_curve.json and learning_curve.png under ``out``; returns the dict.
    """
    from sightwise.baselines.figures import plot_learning_curve

    pool = np.sort(np.concatenate([fold.train, fold.val]))
    subsets = labelled_subsets(pool, ctx.labels, ns, ctx.seed)
    too_many = [n for n in ns if n not in subsets]
    if too_many:
        log(f"learning curve: a class has fewer than {min(too_many)} training images; "
            f"leaving out n = {', '.join(map(str, too_many))}")
    if budget_s is None:
        budget_s = fold_record["methods"]["finetune"]["params"]["budget_s"]
    y_test = ctx.labels[fold.test]
    points = []
    for n, idx in tqdm(subsets.items(), desc="learning curve", disable=not ctx.progress):
        train, val = carve_val(idx, ctx.labels, ctx.seed, LC_VAL_FRACTION)
        sub = Fold(fold.index, train, val, fold.test)
        methods = {}
        for m in LC_METHODS:
            run = run_method(m, ctx, sub, budget_s)
            methods[m] = _scores(y_test, run.y_pred, run.train_seconds, ctx.seed)
            log(f"learning curve n={n}/class {m}: accuracy {methods[m]['accuracy']:.4f}")
        points.append({"n_per_class": n, "labels_per_class": float(n), "n_train": len(train),
                       "n_val": len(val), "indices": idx.tolist(), "methods": methods})
    points.append(_all_point(pool, fold_record, len(ctx.classes), ctx.seed))
    curve = {"dataset": ctx.data, "classes": ctx.classes, "seed": ctx.seed, "fold": fold.index,
             "n_test": len(fold.test), "test_sha256": fold_record["test_sha256"],
             "methods": list(LC_METHODS), "cnn_budget_s": budget_s,
             "skipped_sizes": too_many, "points": points}
    atomic_write_json(Path(out) / "learning_curve.json", curve)
    os.chmod(Path(out) / "learning_curve.json", 0o644)  # mkstemp makes 0600
    plot_learning_curve(curve, Path(out) / "learning_curve.png")
    return curve
