"""Active learning, simulated: which order reaches a given accuracy with the fewest labels?

For NEU (6 classes) and Grocery Store (43 coarse classes) the ground truth plays the
annotator. Each strategy (random, kcenter, margin, auto: sightwise.label.order.select, the
function the labelling page uses) picks images from the pool in batches; after each batch
a logistic-regression probe is refitted on the labels so far (its probabilities drive
margin); at 12, 24, 48, 96 and 192 labels the probe's accuracy on the held-out test split
is recorded. Five seeds each (a seed draws a 90 % subsample of the pool and the random
order), mean and 95 % t-interval, and the paired auto - random difference.

Features: the frozen ImageNet EfficientNet-Lite0 (what `train`'s linear probe uses),
computed once and cached under --cache (default /tmp/sw-label-bench).

    python bench/active_learning.py [--datasets neu,grocery] [--seeds 5] [--out DIR]

Writes --out/<dataset>.json; the figure shows every dataset measured into --out (so the
two datasets may be run as separate commands). Prints one line per dataset/strategy/budget
and `ratio=` (mean accuracy of auto over random across budgets, datasets of this run) last.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

BUDGETS = (12, 24, 48, 96, 192)
STRATEGIES = ("random", "kcenter", "margin", "auto")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PROBE_C = 1.0  # the probe during labelling (few labels: weak regularisation; see docs)


def load(name: str, cache: Path, progress: bool):
    """(scaled features, labels, class names, pool indices, test indices)."""
    from sightwise.data.datasets import load_dataset
    from sightwise.label.audit import scaled
    from sightwise.label.features import cached_backbone_features

    if name == "neu":
        ds = load_dataset(SHARED / "neu_det" / "images")
        feats = cached_backbone_features(ds, cache / "neu.npz", progress=progress)
        names = [Path(s.source).parent.name for s in feats.samples]
        rng = np.random.default_rng(0)  # one fixed stratified 2/3 pool, 1/3 test split
        classes = sorted(set(names))
        y = np.array([classes.index(n) for n in names])
        test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: (y == c).sum() // 3]
                               for c in range(len(classes))])
        pool = np.setdiff1d(np.arange(len(y)), test)
    else:  # Grocery: coarse class = the second folder level (Fruit/<Apple>/<Golden-...>)
        ds = load_dataset(SHARED / "grocery_store")
        feats = cached_backbone_features(ds, cache / "grocery.npz", progress=progress)
        root = SHARED / "grocery_store"
        parts = [Path(s.source).relative_to(root).parts for s in feats.samples]
        # Classes of the training split (this copy's test split also has 39 photos of
        # Mushroom, which no training photo shows: no order could learn it; left out).
        classes = sorted({p[2] for p in parts if p[0] == "train"})
        y = np.array([classes.index(p[2]) if p[2] in classes else -1 for p in parts])
        split = np.array([p[0] for p in parts])
        pool = np.flatnonzero(split == "train")
        test = np.flatnonzero((split == "test") & (y >= 0))
    return scaled(feats.vectors).astype(np.float32), y, classes, pool, test


def run_one(x, emb, y, n_classes, pool, test, strategy, seed):
    """Accuracy at each budget for one strategy and seed."""
    from sightwise.label.order import density, probe_probabilities, select

    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(pool, int(0.9 * len(pool)), replace=False))
    dens = np.zeros(len(emb))
    dens[pool] = density(emb[pool])  # typicality within the pool, as the page computes it
    labelled: list[int] = []
    acc = {}
    probs = None
    for budget in BUDGETS:
        while len(labelled) < budget:
            step = min(max(6, len(labelled) // 4), budget - len(labelled))
            cand = np.setdiff1d(pool, labelled)
            picks, _ = select(strategy, step, candidates=cand, rng=rng, emb=emb, probs=probs,
                              selected=labelled, labels=y[labelled].tolist(),
                              n_classes=n_classes, dens=dens)
            labelled += picks
            probs = probe_probabilities(x, labelled, y[labelled], n_classes, C=PROBE_C)
        acc[budget] = float((probs[test].argmax(1) == y[test]).mean()) if probs is not None \
            else float((y[test] == np.bincount(y[labelled]).argmax()).mean())
    return acc


def t_interval(values) -> tuple[float, float, float]:
    from scipy import stats

    v = np.asarray(values, np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sightwise.evaluate.figures import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        for strategy in STRATEGIES:
            rows = res["strategies"][strategy]
            m = [rows[str(b)]["mean"] for b in BUDGETS]
            lo = [rows[str(b)]["ci95"][0] for b in BUDGETS]
            hi = [rows[str(b)]["ci95"][1] for b in BUDGETS]
            ax.plot(BUDGETS, m, marker="o", label=strategy, lw=2 if strategy == "auto" else 1.2)
            ax.fill_between(BUDGETS, lo, hi, alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.set_xlabel("labels")
        ax.set_ylabel(f"test accuracy (n={res['n_test']})")
        ax.set_title(f"{name}: {res['n_classes']} classes, pool {res['n_pool']}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Simulated labelling: linear probe on frozen features, {res['seeds']} seeds "
                 "(mean, 95 % interval)")
    fig.tight_layout()
    save_figure(fig, out)  # atomic, like every figure the product writes
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="neu,grocery")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache", default="/tmp/sw-label-bench")
    ap.add_argument("--out", default="/tmp/sw-label-bench/out-al", help="JSON per dataset")
    ap.add_argument("--figure", default="docs/figures/active_learning.png")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (1: modest on a shared machine)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from sightwise.label.order import centred_unit

    threadpool_limits(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ratios = []
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        x, y, classes, pool, test = load(name, Path(args.cache), progress=True)
        emb = centred_unit(x)
        per = {s: {b: [] for b in BUDGETS} for s in STRATEGIES}
        for seed in range(args.seeds):
            for s in STRATEGIES:
                for b, a in run_one(x, emb, y, len(classes), pool, test, s, seed).items():
                    per[s][b].append(a)
        res = {"n_classes": len(classes), "n_pool": int(0.9 * len(pool)), "n_test": len(test),
               "seeds": args.seeds, "strategies": {}, "auto_minus_random": {}}
        for s in STRATEGIES:
            res["strategies"][s] = {}
            for b in BUDGETS:
                m, lo, hi = t_interval(per[s][b])
                res["strategies"][s][str(b)] = {"mean": m, "ci95": [lo, hi], "runs": per[s][b]}
                print(f"{name:8s} {s:8s} {b:4d} labels: {m:.3f} [{lo:.3f}, {hi:.3f}]")
        for b in BUDGETS:
            m, lo, hi = t_interval(np.subtract(per["auto"][b], per["random"][b]))
            res["auto_minus_random"][str(b)] = {"mean": m, "ci95": [lo, hi]}
            ratios.append(np.mean(per["auto"][b]) / np.mean(per["random"][b]))
            print(f"{name:8s} auto - random at {b:3d}: {100 * m:+.1f} points [{100 * lo:+.1f}, "
                  f"{100 * hi:+.1f}]")
        res["seconds"] = round(time.perf_counter() - t0, 1)
        (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    # The figure shows every dataset measured into --out (runs may be separate commands).
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in ("neu", "grocery")
               if (out / f"{n}.json").is_file()}
    print(f"figure: {plot(results, Path(args.figure))}")
    print(f"ratio={np.mean(ratios):.4f} (auto/random mean test accuracy over budgets and "
          f"datasets; cores={os.cpu_count()})")


if __name__ == "__main__":
    main()
