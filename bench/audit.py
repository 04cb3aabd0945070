"""The audit's label-error detection, measured: flip a known share of training labels and
see how many the audit flags, and whether removing what it flags helps.

For NEU (its fixed 2/3 training split, 6 classes) and Grocery Store (train split, 43
coarse classes), flip 5 % and 10 % of the training labels (seeded, each to a uniformly
drawn other class), run the audit's label-error step (sightwise.label.audit.audit_features:
5-fold out-of-fold linear probe + confident learning) and report precision and recall of
the flipped images among the flagged ones. Then the test accuracy of a linear probe trained
on the noisy labels, on the noisy labels minus the flagged images, and on the clean labels
(the ceiling). Seeds 0..S-1, mean and range.

Features: the frozen ImageNet EfficientNet-Lite0, cached under --cache (shared with
bench/active_learning.py).

    python bench/audit.py [--datasets neu,grocery] [--rates 0.05,0.1] [--seeds 3]

Writes --out/<dataset>.json; the figure shows every dataset measured into --out. Prints one
line per dataset/rate/seed and `ratio=` (mean test accuracy after removing the flagged
images over that with the noisy labels) last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from active_learning import load  # noqa: E402  (the same data, split and cached features)


def flip(y: np.ndarray, n_classes: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, indices flipped): round(rate n) labels moved to another class."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(y), int(round(rate * len(y))), replace=False))
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, n_classes, len(idx))) % n_classes
    return noisy, idx


def probe_accuracy(x_train, y_train, x_test, y_test, n_classes: int) -> float:
    from sklearn.linear_model import LogisticRegression

    from sightwise.label.audit import PROBE_C

    lr = LogisticRegression(C=PROBE_C, max_iter=1000).fit(x_train, y_train)
    return float((lr.predict(x_test) == y_test).mean())


def run(x, y, classes, train, test, rate, seed) -> dict:
    from sightwise.label.audit import audit_features
    from sightwise.label.features import Features
    from sightwise.types import Sample

    n_classes = len(classes)
    noisy, flipped = flip(y[train], n_classes, rate, seed)
    samples = [Sample(str(i), int(c), "train", str(i)) for i, c in enumerate(noisy)]
    t0 = time.perf_counter()
    result = audit_features(Features(x[train], samples, [], "bench"), classes, seed=seed)
    seconds = time.perf_counter() - t0
    flagged = np.array(sorted(int(s["path"]) for s in result["suspects"]), np.int64)
    hits = len(np.intersect1d(flagged, flipped))
    keep = np.setdiff1d(np.arange(len(train)), flagged)
    return {
        "flipped": len(flipped), "flagged": len(flagged),
        "precision": hits / max(1, len(flagged)), "recall": hits / max(1, len(flipped)),
        "estimated_noise_rate": result["summary"]["estimated_noise_rate"],
        "acc_noisy": probe_accuracy(x[train], noisy, x[test], y[test], n_classes),
        "acc_cleaned": probe_accuracy(x[train][keep], noisy[keep], x[test], y[test], n_classes),
        "acc_clean": probe_accuracy(x[train], y[train], x[test], y[test], n_classes),
        "audit_seconds": round(seconds, 1),
    }


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sightwise.evaluate.figures import save_figure

    keys = [(d, r) for d in results for r in results[d]]
    labels = [f"{d}\n{100 * float(r):.0f} % flipped" for d, r in keys]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    pos = np.arange(len(keys))
    for off, metric in ((-0.2, "precision"), (0.2, "recall")):
        vals = [[run[metric] for run in results[d][r]] for d, r in keys]
        a1.bar(pos + off, [np.mean(v) for v in vals], 0.4, label=metric,
               yerr=[[np.mean(v) - min(v) for v in vals], [max(v) - np.mean(v) for v in vals]])
    a1.axhline(0.8, color="grey", ls="--", lw=1)
    a1.set_xticks(pos, labels)
    a1.set_ylim(0, 1.1)
    a1.set_title("flipped labels among the flagged images (dashed: target 0.8)")
    a1.legend(loc="lower right")
    for off, metric, name in ((-0.27, "acc_noisy", "noisy labels"),
                              (0.0, "acc_cleaned", "flagged removed"),
                              (0.27, "acc_clean", "clean labels (ceiling)")):
        a2.bar(pos + off, [np.mean([run[metric] for run in results[d][r]]) for d, r in keys],
               0.27, label=name)
    lo = min(run["acc_noisy"] for d, r in keys for run in results[d][r])
    a2.set_ylim(max(0.0, lo - 0.05), 1.0)
    a2.set_xticks(pos, labels)
    a2.set_title("test accuracy of a linear probe")
    a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.tight_layout()
    save_figure(fig, out)  # atomic, like every figure the product writes
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="neu,grocery")
    ap.add_argument("--rates", default="0.05,0.1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/sw-label-bench")
    ap.add_argument("--out", default="/tmp/sw-label-bench/out-audit", help="JSON per dataset")
    ap.add_argument("--figure", default="docs/figures/audit.png")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (1: modest on a shared machine)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    results: dict = {}
    ratios = []
    out = Path(args.out)
    for name in args.datasets.split(","):
        x, y, classes, train, test = load(name, Path(args.cache), progress=True)
        results[name] = {}
        for rate in (float(r) for r in args.rates.split(",")):
            runs = []
            for seed in range(args.seeds):
                r = run(x, y, classes, train, test, rate, seed)
                runs.append(r)
                print(f"{name:8s} {100 * rate:4.0f} % seed {seed}: flagged {r['flagged']:4d} of "
                      f"{len(train)} (flipped {r['flipped']}), precision {r['precision']:.3f} "
                      f"recall {r['recall']:.3f}; accuracy noisy {r['acc_noisy']:.4f} -> "
                      f"cleaned {r['acc_cleaned']:.4f} (clean {r['acc_clean']:.4f}); "
                      f"{r['audit_seconds']} s", flush=True)
                ratios.append(r["acc_cleaned"] / r["acc_noisy"])
            results[name][str(rate)] = runs
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(results[name], indent=2))
    # The figure shows every dataset measured into --out (runs may be separate commands).
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in ("neu", "grocery")
               if (out / f"{n}.json").is_file()}
    print(f"figure: {plot(results, Path(args.figure))}")
    print(f"ratio={np.mean(ratios):.4f} (test accuracy with the flagged images removed over "
          f"with the noisy labels; cores={os.cpu_count()})")


if __name__ == "__main__":
    main()
