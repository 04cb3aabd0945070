"""The README's magnetic-tile inspection figures, end to end with the default settings.

Split (seeded): 400 of the `Free` images to fit on (the detector holds out 20 % of those for
its threshold), the other `Free` images as good test images, every other class as defects
with their masks. The folders are symlinks under --work; then `inspect fit` and
`inspect evaluate` run as a user would run them.
Usage: python bench/magnetic_tile.py [--work runs/magnetic-tile] [--threads 2]
       [--figure docs/figures/magnetic_tile_heatmaps.png]  (about 7 min on 2 cores)
       [--evaluate-only]  (the --work detector again, about 2 min)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sightwise.anomaly.evaluate import evaluate_detector
from sightwise.anomaly.fit import FitConfig, fit_detector
from sightwise.bundle import load_bundle

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


def heatmap_figure(detector: Path, good: Path, defects: Path, out: Path, per_class: int = 2) -> None:
    """Seeded `per_class` defects of each class and two good tiles, each overlaid with its
    heat map at its own size and titled with its score and verdict at the threshold."""
    from matplotlib.figure import Figure

    from sightwise.anomaly.detector import Detector
    from sightwise.data.decode import decode_image

    det = Detector(detector)
    rng = np.random.default_rng(0)
    picks = []
    for cls in sorted(d for d in defects.iterdir() if d.is_dir()):
        files = sorted(cls.glob("*.jpg"))
        picks += [(cls.name, files[i]) for i in sorted(rng.choice(len(files), per_class, replace=False))]
    goods = sorted(good.glob("*.jpg"))
    picks += [("good", goods[i]) for i in sorted(rng.choice(len(goods), per_class, replace=False))]
    cols = 2 * per_class * 3 // 2 if len(picks) > 6 else len(picks)
    rows = -(-len(picks) // cols)
    fig = Figure(figsize=(2.3 * cols, 2.9 * rows), layout="constrained")
    for k, (name, f) in enumerate(picks):
        image = decode_image(f)  # as score / evaluate read it (EXIF orientation applied)
        r = det.inspect([image])[0]
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(det.overlay(image, r.patch_map))
        ax.set_title(f"{name}: {r.verdict}\nscore {r.score:.1f} (t={det.threshold:.1f})", fontsize=9)
        ax.set_axis_off()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/magnetic-tile"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", type=Path, help="also draw the README's heat-map figure here")
    ap.add_argument("--figure-only", action="store_true", help="draw it from an existing --work detector")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="evaluate the existing --work detector instead of fitting a new one")
    args = ap.parse_args()
    fit, good, defects = link_split(args.work)
    if args.figure_only:
        if args.figure is None:
            ap.error("--figure-only needs --figure PATH")
        heatmap_figure(args.work / "detector", good, defects, args.figure)
        return
    t0 = time.perf_counter()
    if args.evaluate_only:
        meta = load_bundle(args.work / "detector").meta.to_dict()
    else:
        meta = fit_detector(fit, args.work / "detector", FitConfig(threads=args.threads))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate_detector(args.work / "detector", good, defects, ROOT / "masks",
                            report=args.work / "detector_report.html", threads=args.threads)
    t_eval = time.perf_counter() - t0
    keys = ("image_auroc", "pixel_auroc", "pro", "false_alarm_rate", "f1", "n_good", "n_defect")
    print(json.dumps({k: res.get(k) for k in keys}))
    print(f"pixel AUROC over the defect images' pixels only: {_f(res['pixel_auroc_defect_images'])}, "
          f"mean within each defect image: {_f(res['pixel_auroc_within_image'])}")
    for name, row in res["per_class"].items():
        print(f"  {name:8s} n={row['n']:3d}  image AUROC {_f(row['image_auroc'])}  "
              f"recall {_f(row['recall'])}  pixel AUROC {_f(row['pixel_auroc'])}  "
              f"within image {_f(row['pixel_auroc_within_image'])}  "
              f"share of marked pixels {_f(row['defect_pixel_share'])}")
    fitted = "loaded" if args.evaluate_only else f"fit {t_fit:.0f} s"
    print(f"{fitted} ({meta['metrics']['n_fit']} images, bank {meta['metrics']['memory_bank']}), "
          f"evaluate {t_eval:.0f} s ({res['n_good'] + res['n_defect']} images, "
          f"{(res['n_good'] + res['n_defect']) / t_eval:.1f} img/s incl. heat maps and report)")
    if args.figure:
        heatmap_figure(args.work / "detector", good, defects, args.figure)


if __name__ == "__main__":
    main()
