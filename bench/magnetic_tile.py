"""The README's magnetic-tile inspection figures, end to end with the default settings.

Split (seeded): 400 of the `Free` images to fit on (the detector holds out 20 % of those for
its threshold), the other `Free` images as good test images, every other class as defects
with their masks. The folders are symlinks under --work; then `inspect fit` and
`inspect evaluate` run as a user would run them.
Usage: python bench/magnetic_tile.py [--work runs/magnetic-tile] [--threads 2]  (about 15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sightwise.anomaly.evaluate import evaluate_detector
from sightwise.anomaly.fit import FitConfig, fit_detector

ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def link_split(work: Path, n_fit: int = 400, seed: int = 0) -> tuple[Path, Path, Path]:
    free = sorted((ROOT / "images" / "Free").glob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(free))
    fit, good, defects = work / "fit", work / "good", work / "defects"
    for folder, files in ((fit, [free[i] for i in order[:n_fit]]), (good, [free[i] for i in order[n_fit:]])):
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
    for cls in sorted(d for d in (ROOT / "images").iterdir() if d.is_dir() and d.name != "Free"):
        (defects / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.glob("*.jpg")):
            if not (defects / cls.name / f.name).exists():
                (defects / cls.name / f.name).symlink_to(f)
    return fit, good, defects


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/magnetic-tile"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fit, good, defects = link_split(args.work)
    t0 = time.perf_counter()
    meta = fit_detector(fit, args.work / "detector", FitConfig(threads=args.threads))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate_detector(args.work / "detector", good, defects, ROOT / "masks",
                            report=args.work / "detector_report.html", threads=args.threads)
    t_eval = time.perf_counter() - t0
    keys = ("image_auroc", "pixel_auroc", "pro", "false_alarm_rate", "f1", "n_good", "n_defect")
    print(json.dumps({k: res.get(k) for k in keys}))
    print(f"fit {t_fit:.0f} s ({meta['metrics']['n_fit']} images, bank {meta['metrics']['memory_bank']}), "
          f"evaluate {t_eval:.0f} s ({res['n_good'] + res['n_defect']} images, "
          f"{(res['n_good'] + res['n_defect']) / t_eval:.1f} img/s incl. heat maps and report)")


if __name__ == "__main__":
    main()
