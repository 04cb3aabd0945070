"""Claim: `sightwise train`'s defaults generalise: one number over every labelled set we
have, so a change to a default is judged on all of them, never on one.

    python bench/suite.py [--budget 3m] [--only NAME ...] [--work /tmp/sightwise-suite]
                          [--threads N] [--label today] [--json out.json]

Runs `sightwise train DATA --out RUN --budget B --seed 0` (all other options default, as a
new user would) on each set below, reads RUN/metrics.json and prints one row per set: test
n, accuracy and macro-F1 with their 95 % bootstrap intervals, the time used, what `auto`
chose (strategy, ensemble members, input size). The last lines are the summary figure,
`suite_macro_f1=` (the mean test macro-F1 over the sets), and `cores=`.

Sets (from ../shared/datasets, read in place; variants are written once under --work as
small files plus CSV manifests read with --allow-outside, and reused by later runs):

    neu               NEU steel defects, 6 classes x 300, 200 px greyscale JPEG
    breastmnist       MedMNIST BreastMNIST .npz (official splits), 28 px ultrasound
    pneumoniamnist    MedMNIST PneumoniaMNIST, the shared balanced re-sample (a modified
                      copy: train 2,428 / val 270 / test 468), 28 px chest X-ray, 2 classes
    grocery-coarse    Grocery Store, 42 coarse classes (its own train/val/test)
    grocery-fine      Grocery Store, 81 fine classes (--labels leaf)
    tile-binary       magnetic tile, defect vs Free (crops of varying size and shape)
    tile-6            magnetic tile, its six classes (imbalanced: Free 952, Fray 32)
    textures          the demo's six scikit-image textures (64 px tiles)
    neu-few           NEU with 10 training images per class (val/test untouched)
    neu-imbalanced    NEU with one class cut to 10 % of its images
    detail-large      NEU 64 px crops pasted at a seeded place into 768 px grey canvases:
                      large images with small details
    mixed-modes       Grocery's 3 top-level groups (Fruit, Packages, Vegetables), every
                      photo re-saved at mixed sizes and modes (L, RGBA, P, CMYK JPEG,
                      16-bit PNG)
    mixed-small       Apple vs Pear from Grocery, 125 each, re-saved the same way: 250
                      images, so ~38 validation and ~38 test images (ties are likely)

Each row is one run, one seed: the intervals are the test split's, not the seed's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"


# -- the sets -------------------------------------------------------------------------------


def _rows_to_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".jpeg"))


def _split_of(i: int, n: int, rng: np.random.Generator) -> list[str]:
    """A seeded 70/15/15 assignment of n items."""
    order = rng.permutation(n)
    names = np.array(["train"] * n, dtype=object)
    names[order[: round(0.15 * n)]] = "test"
    names[order[round(0.15 * n): round(0.30 * n)]] = "val"
    return names.tolist()


def tile_binary(work: Path) -> tuple[Path, list[str]]:
    rows = []
    for cls in sorted(p.name for p in (DATA / "magnetic_tile" / "images").iterdir()):
        label = "free" if cls == "Free" else "defect"
        rows += [(str(p), label, "") for p in _images(DATA / "magnetic_tile" / "images" / cls)]
    return _rows_to_csv(work / "tile-binary" / "manifest.csv", rows), ["--allow-outside"]


def neu_few(work: Path, per_class: int = 10) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    rows = []
    for cls_dir in sorted((DATA / "neu_det" / "images").iterdir()):
        files = _images(cls_dir)
        splits = _split_of(0, len(files), rng)
        train = [f for f, s in zip(files, splits, strict=True) if s == "train"]
        keep = set(rng.choice(len(train), per_class, replace=False).tolist())
        rows += [(str(f), cls_dir.name, s) for f, s in zip(files, splits, strict=True)
                 if s != "train"]
        rows += [(str(f), cls_dir.name, "train") for i, f in enumerate(train) if i in keep]
    return _rows_to_csv(work / "neu-few" / "manifest.csv", rows), ["--allow-outside"]


def neu_imbalanced(work: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(1)
    rows = []
    for k, cls_dir in enumerate(sorted((DATA / "neu_det" / "images").iterdir())):
        files = _images(cls_dir)
        if k == 0:  # the first class keeps 10 % of its images
            files = [files[i] for i in sorted(rng.choice(len(files), len(files) // 10,
                                                          replace=False))]
        rows += [(str(f), cls_dir.name, "") for f in files]
    return _rows_to_csv(work / "neu-imbalanced" / "manifest.csv", rows), ["--allow-outside"]


def detail_large(work: Path, canvas: int = 768, crop: int = 64) -> tuple[Path, list[str]]:
    out = work / "detail-large"
    done = out / ".done"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        rng = np.random.default_rng(2)
        for cls_dir in sorted((DATA / "neu_det" / "images").iterdir()):
            (out / cls_dir.name).mkdir(parents=True)
            for f in _images(cls_dir)[:120]:
                src = np.asarray(Image.open(f).convert("L"))
                y, x = rng.integers(0, src.shape[0] - crop, 2)
                patch = src[y:y + crop, x:x + crop]
                bg = np.clip(rng.normal(patch.mean(), 6, (canvas, canvas)), 0, 255)
                cy, cx = rng.integers(0, canvas - crop, 2)
                bg[cy:cy + crop, cx:cx + crop] = patch
                Image.fromarray(bg.astype(np.uint8)).save(out / cls_dir.name / f"{f.stem}.png")
        done.write_text("ok")
    return out, []


MODES = ["L", "RGBA", "P", "CMYK", "I;16", "RGB"]


def _resave(src: Path, dst_dir: Path, i: int, rng: np.random.Generator,
            stem: str | None = None) -> None:
    """Save one photo rescaled by a random factor (0.4-2.5) in the i-th of MODES."""
    stem = stem or src.stem
    img = Image.open(src).convert("RGB")
    scale = rng.uniform(0.4, 2.5)
    img = img.resize((max(16, round(img.width * scale)), max(16, round(img.height * scale))))
    mode = MODES[i % len(MODES)]
    if mode == "CMYK":
        img.convert("CMYK").save(dst_dir / f"{stem}.jpg", quality=90)
    elif mode == "I;16":
        arr = (np.asarray(img.convert("L"), np.uint16) * 257)
        Image.fromarray(arr).save(dst_dir / f"{stem}.png")
    elif mode == "P":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(dst_dir / f"{stem}.png")
    else:
        img.convert(mode).save(dst_dir / f"{stem}.png")


def mixed_modes(work: Path) -> tuple[Path, list[str]]:
    """Grocery's three top-level groups (Fruit, Packages, Vegetables), every photo of its
    own train/val/test re-saved at a random scale in one of MODES."""
    out = work / "mixed-modes"
    done = out / ".done"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        rng = np.random.default_rng(3)
        src_root = DATA / "grocery_store"
        for split in ("train", "val", "test"):
            for cls_dir in sorted(d for d in (src_root / split).iterdir() if d.is_dir()):
                dst = out / split / cls_dir.name
                dst.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(_images(cls_dir)):
                    _resave(f, dst, i, rng)
        done.write_text("ok")
    return out, []


def mixed_small(work: Path, per_class: int = 125) -> tuple[Path, list[str]]:
    """Apple vs Pear from Grocery (any split), 125 each, re-saved like mixed-modes: a
    250-image binary set whose 70/15/15 split leaves ~38 validation and ~38 test images."""
    out = work / "mixed-small"
    done = out / ".done"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        rng = np.random.default_rng(5)
        for cls in ("Apple", "Pear"):
            files = sorted(f for split in ("train", "val", "test")
                           for f in _images(DATA / "grocery_store" / split / "Fruit" / cls))
            dst = out / cls
            dst.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(sorted(rng.choice(len(files), per_class, replace=False))):
                _resave(files[j], dst, i, rng, stem=f"{cls.lower()}_{i:03d}")
        done.write_text("ok")
    return out, []


def textures(work: Path) -> tuple[Path, list[str]]:
    from sightwise.data.demo import make_texture_dataset

    return make_texture_dataset(work / "textures"), []


SETS = {
    "neu": lambda w: (DATA / "neu_det" / "images", []),
    "breastmnist": lambda w: (DATA / "medmnist" / "breastmnist.npz", []),
    "pneumoniamnist": lambda w: (DATA / "medmnist" / "pneumoniamnist_balanced.npz", []),
    "grocery-coarse": lambda w: (DATA / "grocery_store", []),
    "grocery-fine": lambda w: (DATA / "grocery_store", ["--labels", "leaf"]),
    "tile-binary": tile_binary,
    "tile-6": lambda w: (DATA / "magnetic_tile" / "images", []),
    "textures": textures,
    "neu-few": neu_few,
    "neu-imbalanced": neu_imbalanced,
    "detail-large": detail_large,
    "mixed-modes": mixed_modes,
    "mixed-small": mixed_small,
}


# -- running and reporting ------------------------------------------------------------------


def run_one(name: str, data: Path, extra: list[str], args) -> dict:
    run = args.work / "runs" / args.label / name
    metrics = run / "metrics.json"
    if not metrics.exists() or args.rerun:
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "sightwise.cli", "train", str(data), "--out", str(run),
               "--budget", args.budget, "--seed", "0", "--no-progress", *extra]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "SIGHTWISE_TRACKING": "0"}
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        (args.work / "runs" / args.label).mkdir(parents=True, exist_ok=True)
        (args.work / "runs" / args.label / f"{name}.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            return {"name": name, "error": (res.stderr.strip().splitlines() or ["?"])[-1],
                    "seconds": time.perf_counter() - t0}
    m = json.loads(metrics.read_text())
    t = m["test"]
    chosen = m["strategy"]["chosen"]
    members = (m["strategy"].get("candidates", {}).get(chosen, {}) or {}).get("members")
    return {"name": name, "n": t["n"], "accuracy": t["accuracy"], "accuracy_ci": t["accuracy_ci"],
            "macro_f1": t["macro_f1"], "macro_f1_ci": t.get("macro_f1_ci"),
            "seconds": m["timing"]["total_seconds"], "chosen": chosen,
            "members": len(members) if isinstance(members, list) else 1,
            "size": m["preprocessing"]["size"], "choices": m.get("choices", {})}


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--only", nargs="*", choices=sorted(SETS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/sightwise-suite"))
    ap.add_argument("--label", default="default", help="Run folder name: keeps results of "
                    "different code versions apart (e.g. before / after).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rerun", action="store_true", help="Train again even if a run exists.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} not found: the suite reads the shared datasets", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or list(SETS):
        data, extra = SETS[name](args.work)
        row = run_one(name, data, extra, args)
        rows.append(row)
        if "error" in row:
            print(f"{name:15s} ERROR {row['error']}", flush=True)
        else:
            print(f"{name:15s} n={row['n']:5d} acc {row['accuracy']:.3f} {_ci(row['accuracy_ci'])} "
                  f"macro-F1 {row['macro_f1']:.3f} {_ci(row['macro_f1_ci'])} "
                  f"{row['seconds']:6.0f}s {row['chosen']} x{row['members']} {row['size']}px",
                  flush=True)
    ok = [r for r in rows if "error" not in r]
    if args.json:
        args.json.write_text(json.dumps({"budget": args.budget, "label": args.label,
                                         "rows": rows}, indent=2))
    print(f"sets={len(ok)}/{len(rows)} budget={args.budget}")
    print(f"cores={os.cpu_count()}")
    print(f"suite_macro_f1={np.mean([r['macro_f1'] for r in ok]):.4f}" if ok else "suite_macro_f1=nan")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
