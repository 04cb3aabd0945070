"""Claim: a 10% coreset keeps image AUROC within 0.5 point of the full memory bank while
scoring >= 5x faster (PatchCore, Roth et al. CVPR 2022, Table 1 / Sec. 4.4).

Reference: the full bank (no coreset), in the same process on the same features.
Data: ../shared/datasets/magnetic_tile (Free = good; every other class = defect, masks).
Features come once from the exported ONNX extractor; only the bank changes between rows.
Usage: python bench/inspection.py [--fit 120] [--test 120] [--size 224]  (about 3-5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sightwise.anomaly.detector import smooth_map
from sightwise.anomaly.extractor import build_extractor, export_extractor
from sightwise.anomaly.fit import FitConfig, _onnx_features, load_batch
from sightwise.anomaly.metrics import image_auroc, pixel_auroc
from sightwise.anomaly.patchcore import PatchCore
from sightwise.data.preprocess import Preprocessing
from sightwise.models.registry import get_spec

ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def masks_for(files: list[Path], size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for f in files:
        m = ROOT / "masks" / f.parent.name / (f.stem + ".png")
        if f.parent.name == "Free" or not m.is_file():
            out.append(np.zeros((size, size), bool))
        else:
            img = Image.open(m).convert("L").resize((size, size), Image.Resampling.NEAREST)
            out.append(np.asarray(img) > 127)
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", type=int, default=120)
    ap.add_argument("--test", type=int, default=120, help="good and defect test images each")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    free = sorted((ROOT / "images" / "Free").glob("*.jpg"))
    defects = sorted(f for d in (ROOT / "images").iterdir() if d.name != "Free" for f in d.glob("*.jpg"))
    order = rng.permutation(len(free))
    fit_files = [free[i] for i in order[: args.fit]]
    good = [free[i] for i in order[args.fit: args.fit + args.test]]
    bad = [defects[i] for i in sorted(rng.permutation(len(defects))[: args.test])]
    # stretch, as when the README's figures were measured (the coreset-vs-full comparison
    # does not depend on it; `inspect fit` now letterboxes by default)
    pre = Preprocessing(**{**get_spec("efficientnet_lite0").preprocessing.to_dict(), "size": args.size,
                           "resize": "stretch"})
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "extractor.onnx"
        export_extractor(build_extractor(), args.size, onnx_path)
        f_fit = _onnx_features(onnx_path, load_batch(fit_files, pre)[0], 1)
        x_test, kept, _ = load_batch(good + bad, pre)
        f_test = _onnx_features(onnx_path, x_test, 1)
    y = np.array([f.parent.name != "Free" for f in kept])
    gt = masks_for(kept, args.size)
    print(f"cores={os.cpu_count()} fit={len(fit_files)} test={len(kept)} size={args.size}")
    rows = {}
    for name, ratio in (("full", 1.0), ("coreset10", 0.1), ("coreset1", 0.01)):
        t0 = time.perf_counter()
        core = PatchCore(ratio, seed=0, threads=1, border=FitConfig.border).fit(f_fit)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, maps = core.score(f_test)
        t_score = time.perf_counter() - t0
        pix = np.stack([smooth_map(m, args.size) for m in maps])
        rows[name] = dict(auroc=image_auroc(scores, y), pixel=pixel_auroc(pix, gt),
                          mb=core.memory_bank.nbytes / 2**20, ips=len(kept) / t_score, fit_s=t_fit)
        r = rows[name]
        print(f"{name:10s} bank={len(core.memory_bank):7d} ({r['mb']:.1f} MiB) image_auroc={r['auroc']:.4f} "
              f"pixel_auroc={r['pixel']:.4f} search {r['ips']:.1f} img/s (NN search only) fit {t_fit:.1f}s")
    full, c10 = rows["full"], rows["coreset10"]
    print(f"coreset10 - full image AUROC: {100 * (c10['auroc'] - full['auroc']):+.2f} points; "
          f"memory {c10['mb'] / full['mb']:.3f}x")
    print(f"ratio={c10['ips'] / full['ips']:.2f} (coreset10 vs full-bank scoring speed)")


if __name__ == "__main__":
    main()
