"""Does synthetic data help? The docs' figures for docs/guides/synthetic.md.

Part `tile`: magnetic tile with `inspect fit --synthetic` against without, on the split of
bench/magnetic_tile.py (400 Free images to fit on, the other Free images and every defect
class to test): image and pixel AUROC, PRO, fit time, for the memory bank alone, the
synthetic-defect head alone and the two combined.

Part `neu`: NEU with one class cut to 10 training images (seeded), for several classes and
seeds; rare-class recall and macro-F1 on the untouched test split for (a) no synthetic data,
(b) classic augmentation of the rare images only, (c) procedural images of the rare class,
(d) GAN images of the rare class, (e) what the guardrail chose offered (c) and offered (d).
Models are the product's linear probe (`train --strategy linear-probe`) on frozen
EfficientNet-Lite0 features; features of every image are computed once and cached.

Everything is cached under --work (default /tmp/sightwise-synth-bench), so an interrupted
run resumes where it stopped. Usage:
  python bench/synthetic.py --part tile [--threads 2]
  python bench/synthetic.py --part neu [--classes inclusion,scratches,rolled-in_scale]
                                       [--seeds 0,1,2] [--gan-budget 6m] [--figures docs/figures]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parents[1] / "shared" / "datasets"


def _cached(path: Path, make):
    """JSON result at `path`, made once (resumable benchmark)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)
    return value


# -- magnetic tile ---------------------------------------------------------------------------


def tile(work: Path, threads: int) -> dict:
    """One `fit --synthetic` (its memory bank is the plain detector's: same images, seed and
    coreset), then three detectors that differ only in how they score: the bank alone
    (bundle.json without the synthetic section), the head alone, and both combined. The
    test images' patch features are computed once and shared (the extractor is the same
    file in all three), so evaluation costs one pass instead of three."""
    import sys

    sys.path.insert(0, str(HERE))
    from magnetic_tile import ROOT, link_split

    from sightwise.anomaly.fit import FitConfig, fit_detector

    fit, good, defects = link_split(work / "split")
    det = work / "detector_synthetic"

    def run():
        t0 = time.perf_counter()
        meta = fit_detector(fit, det, FitConfig(threads=threads, synthetic="combined"))
        return {"fit_seconds": time.perf_counter() - t0, "head": meta["anomaly"]["synthetic"]}

    fitted = _cached(work / "fit.json", run)
    head_s = fitted["head"]["seconds"]["total"]
    variants = {"memory bank": (work / "detector_bank", None),
                "synthetic head alone": (work / "detector_head", "head"),
                "bank + synthetic head": (det, "combined")}
    out = {}
    for name, (path, mode) in variants.items():
        if path != det and not (path / "bundle.json").is_file():
            _with_mode(det, path, mode)
        row = _cached(work / f"{path.name}.eval.json",
                      lambda path=path: _evaluate(path, good, defects, ROOT / "masks", threads))
        row["fit_seconds"] = fitted["fit_seconds"] - (head_s if mode is None else 0.0)
        out[name] = row
    return out


_FEATURES: dict[bytes, np.ndarray] = {}


def _evaluate(det, good, defects, masks, threads) -> dict:
    import hashlib

    import sightwise.anomaly.evaluate as ev

    class SharedFeatures(ev.Detector):
        """The product's Detector, remembering patch features by image content."""

        def features(self, images, batch_size=16):
            keys = [hashlib.sha1(im.tobytes() + repr(im.size).encode()).digest() for im in images]
            todo = [i for i, k in enumerate(keys) if k not in _FEATURES]
            if todo:
                new = super().features([images[i] for i in todo], batch_size)
                _FEATURES.update({keys[i]: f for i, f in zip(todo, new, strict=True)})
            return np.stack([_FEATURES[k] for k in keys])

    t0 = time.perf_counter()
    plain, ev.Detector = ev.Detector, SharedFeatures
    try:
        res = ev.evaluate_detector(det, good, defects, masks, report=det.parent / f"{det.name}_report.html",
                                   threads=threads)
    finally:
        ev.Detector = plain
    keep = ("image_auroc", "pixel_auroc", "pro", "false_alarm_rate", "f1", "n_good", "n_defect")
    row = {k: res.get(k) for k in keep}
    row["per_class"] = {c: {k: r[k] for k in ("image_auroc", "pixel_auroc")}
                        for c, r in res["per_class"].items()}
    row["evaluate_seconds"] = time.perf_counter() - t0
    return row


def _with_mode(src: Path, dst: Path, mode: str | None) -> None:
    """A copy of a --synthetic detector that scores with the head alone (`mode="head"`) or
    the memory bank alone (None: no synthetic section). The threshold is not re-set, which
    AUROC and PRO do not depend on."""
    from sightwise.anomaly.synthetic import HEAD_FILE
    from sightwise.bundle import load_bundle, write_bundle_meta

    shutil.copytree(src, dst, dirs_exist_ok=True)
    meta = load_bundle(dst).meta.to_dict()
    if mode is None:
        del meta["anomaly"]["synthetic"]
        (dst / HEAD_FILE).unlink()
    else:
        meta["anomaly"]["synthetic"]["mode"] = mode
    write_bundle_meta(dst, meta)


def print_tile(rows: dict) -> None:
    print("| detector | image AUROC | pixel AUROC | PRO | fit s |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['pro']:.3f} | "
              f"{r['fit_seconds']:.0f} |")
    for name, r in rows.items():
        per = ", ".join(f"{c} {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}"
                        for c, v in r["per_class"].items())
        print(f"  {name}: {per}")


# -- NEU ---------------------------------------------------------------------------------------

NEU = DATASETS / "neu_det" / "images"
CONDITIONS = ("none", "augment", "procedural", "gan", "guardrail: procedural", "guardrail: gan")


def _features(images: list[np.ndarray], progress: bool = False) -> np.ndarray:
    """Pooled Lite0 features at its own preprocessing (224 px), as the probe computes them."""
    from PIL import Image

    from sightwise.data.preprocess import resize_rgb
    from sightwise.models.classifier import build_classifier
    from sightwise.models.registry import get_spec
    from sightwise.train.features import extract_features, frozen_extractor

    pre = get_spec("efficientnet_lite0").preprocessing
    x = np.stack([resize_rgb(Image.fromarray(im), pre) for im in images])
    model = build_classifier("efficientnet_lite0", 2, pretrained=True).eval()
    return extract_features(frozen_extractor(model.backbone, pre, len(x)), x, pre, progress=progress)


def _decode(files) -> list[np.ndarray]:
    from sightwise.data.decode import decode_image

    return [np.asarray(decode_image(f)) for f in files]


def neu_data(work: Path):
    """NEU's seeded 70/15/15 split (as `train` makes it) and every image's features, cached."""
    from sightwise.data.datasets import load_dataset
    from sightwise.data.splits import assign_splits

    ds = assign_splits(load_dataset(NEU), seed=0)
    files = [s.source for s in ds.samples]
    cache = work / "neu_features.npz"
    if not cache.is_file():
        feats = np.concatenate([_features(_decode(files[i:i + 200])) for i in range(0, len(files), 200)])
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=feats)
    with np.load(cache) as z:
        feats = z["features"]
    y = np.array([s.label for s in ds.samples])
    split = np.array([s.split for s in ds.samples])
    return ds.classes, files, y, split, feats


def cut(y, split, label: int, seed: int, n_train: int = 10, n_val: int = 2):
    """Indices of the setting: the rare class cut to n_train training and n_val validation
    images (seeded); the other classes and the whole test split as they are."""
    rng = np.random.default_rng([seed, label])
    out = {}
    for name, n in (("train", n_train), ("val", n_val)):
        rare = np.flatnonzero((split == name) & (y == label))
        rest = np.flatnonzero((split == name) & (y != label))
        out[name] = np.sort(np.r_[rest, rng.choice(rare, n, replace=False)])
    out["test"] = np.flatnonzero(split == "test")
    return out


def _probe_eval(f_tr, y_tr, f_val, y_val, f_te, y_te, label: int, seed: int) -> dict:
    """The product's linear probe (C on validation, balanced weights above 3:1) -> test."""
    from sklearn.metrics import f1_score, recall_score

    from sightwise.core import is_imbalanced
    from sightwise.train.probe import fit_probe

    weighted = is_imbalanced(np.bincount(y_tr, minlength=6))
    p = fit_probe(f_tr, y_tr, f_val, y_val, 6, class_weight="balanced" if weighted else None, seed=seed)
    pred = (f_te @ p.weight.T + p.bias).argmax(1)
    return {"rare_recall": float(recall_score(y_te == label, pred == label)),
            "macro_f1": float(f1_score(y_te, pred, average="macro")), "C": p.C}


def _augmented(images: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """n copies of the rare training images under the `strong` preset (crop, flips, quarter
    turns, brightness/contrast): the classic augmentation, at the network's input size."""
    import torch
    from PIL import Image

    from sightwise.data.preprocess import resize_rgb
    from sightwise.models.registry import get_spec
    from sightwise.train.augment import make_augment

    torch.manual_seed(seed)
    pre = get_spec("efficientnet_lite0").preprocessing
    aug = make_augment(pre.size, "strong")
    base = [torch.from_numpy(np.array(resize_rgb(Image.fromarray(im), pre))).permute(2, 0, 1)
            for im in images]
    return [aug(base[i % len(base)]).permute(1, 2, 0).numpy() for i in range(n)]


def _procedural(images: list[np.ndarray], folder: Path, n: int, seed: int) -> list[np.ndarray]:
    """n images of the rare class recombined from its own training images: the three kinds
    in turn, each image's texture/patch source another rare training image."""
    from PIL import Image

    from sightwise.synth.procedural import KINDS, make_defect

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        k = i % len(images)
        image, _ = make_defect(images[k], KINDS[i % 3], rng, [im for j, im in enumerate(images) if j != k])
        Image.fromarray(image).save(folder / f"procedural_{i:04d}.png")
        out.append(image)
    return out


def _gan(files, y, idx, classes, label, folder: Path, budget: float, seed: int, n: int, threads):
    """The GAN on this setting's training images only: split folders of copies (links are
    not followed by the data loader), then `synth gan` and its quality report."""
    from sightwise.synth.gan import GanConfig, train_gan
    from sightwise.synth.report import quality_report

    data = folder / "data"
    for name, ids in idx.items():
        for i in ids:
            dst = data / name / classes[y[i]] / Path(files[i]).name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[i], dst)
    out = folder / "gan"
    if not (out / "_gan" / "summary.json").is_file():
        train_gan(data, [classes[label]], out, GanConfig(budget_s=budget, seed=seed, n_samples=n,
                                                         progress=False))
    report = out / f"_report_{classes[label]}.json"
    quality = (json.loads(report.read_text()) if report.is_file() else
               quality_report(out, data, classes[label], threads=threads))
    from sightwise.synth.procedural import list_images

    images = _decode(list_images(out / classes[label]))
    summary = json.loads((out / "_gan" / "summary.json").read_text())
    return images, {"steps": summary["steps"], "seconds": summary["seconds"],
                    **{k: quality[k] for k in ("kid", "precision", "recall", "density", "coverage",
                                               "near_copies")}}


def neu_setting(work: Path, data, label: int, seed: int, n: int, gan_budget: float, threads) -> dict:
    from sightwise.train.synthetic import decide

    classes, files, y, split, feats = data
    idx = cut(y, split, label, seed)
    folder = work / f"{classes[label]}_s{seed}"
    tr, va, te = idx["train"], idx["val"], idx["test"]
    rare_files = [files[i] for i in tr if y[i] == label]

    def evaluate(extra: np.ndarray | None = None) -> dict:
        f_tr, y_tr = feats[tr], y[tr]
        if extra is not None:
            f_tr, y_tr = np.concatenate([f_tr, extra]), np.r_[y_tr, np.full(len(extra), label)]
        return _probe_eval(f_tr, y_tr, feats[va], y[va], feats[te], y[te], label, seed)

    def synthetic_features(name: str, make) -> np.ndarray:
        path = folder / f"{name}_features.npz"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(path, features=_features(make()))
        with np.load(path) as z:
            return z["features"]

    rows = {"none": _cached(folder / "none.json", evaluate)}
    f_aug = synthetic_features("augment", lambda: _augmented(_decode(rare_files), n, seed))
    rows["augment"] = _cached(folder / "augment.json", lambda: evaluate(f_aug))
    f_proc = synthetic_features("procedural", lambda: _procedural(
        _decode(rare_files), folder / "procedural" / classes[label], n, seed))
    rows["procedural"] = _cached(folder / "procedural.json", lambda: evaluate(f_proc))
    gan_info = {}

    def gan_images():
        images, info = _gan(files, y, idx, classes, label, folder, gan_budget, seed, n, threads)
        gan_info.update(info)
        return images

    f_gan = synthetic_features("gan", gan_images)
    rows["gan"] = _cached(folder / "gan.json", lambda: dict(evaluate(f_gan), **gan_info))
    for name, f_syn in (("procedural", f_proc), ("gan", f_gan)):
        def guard(f_syn=f_syn, name=name):
            verdict = decide(feats[tr], y[tr], f_syn, np.full(len(f_syn), label), classes, seed)
            chosen = rows[name] if verdict["kept"] else rows["none"]
            return dict(chosen, kept=verdict["kept"], gain=verdict["gain"])
        rows[f"guardrail: {name}"] = _cached(folder / f"guardrail_{name}.json", guard)
    return rows


def neu(work: Path, classes: list[str], seeds: list[int], n: int, gan_budget: float, threads) -> dict:
    data = neu_data(work)
    out = {}
    for seed in seeds:  # seed-major: an interrupted run has every class at the first seeds
        for cls in classes:
            t0 = time.perf_counter()
            out[f"{cls} s{seed}"] = neu_setting(work, data, data[0].index(cls), seed, n, gan_budget, threads)
            print(f"{cls} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _mean_ci(values, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap interval over settings."""
    v = np.asarray(values, np.float64)
    boots = v[np.random.default_rng(seed).integers(0, len(v), (2000, len(v)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def print_neu(rows: dict) -> dict:
    settings = list(rows)
    print(f"| condition | rare recall [95 % CI] | macro-F1 [95 % CI] | macro-F1 - none [95 % CI] | "
          f"kept |  ({len(settings)} settings)")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for cond in CONDITIONS:
        rec = _mean_ci([rows[s][cond]["rare_recall"] for s in settings])
        f1 = _mean_ci([rows[s][cond]["macro_f1"] for s in settings])
        diff = _mean_ci([rows[s][cond]["macro_f1"] - rows[s]["none"]["macro_f1"] for s in settings])
        kept = (f"{sum(rows[s][cond]['kept'] for s in settings)} of {len(settings)}"
                if cond.startswith("guardrail") else "")
        print(f"| {cond} | {rec[0]:.3f} [{rec[1]:.3f}, {rec[2]:.3f}] | {f1[0]:.3f} [{f1[1]:.3f}, "
              f"{f1[2]:.3f}] | {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}] | {kept} |")
        summary[cond] = {"rare_recall": rec, "macro_f1": f1, "gain": diff}
    for s in settings:
        g = rows[s]["gan"]
        r = {c: rows[s][c]["rare_recall"] for c in ("none", "augment", "procedural")}
        print(f"  {s}: rare recall none {r['none']:.2f}, augment {r['augment']:.2f}, "
              f"procedural {r['procedural']:.2f}, gan {g['rare_recall']:.2f} "
              f"(GAN {g['steps']} steps, KID {g['kid']['value']:.3f}, precision {g['precision']:.2f}, "
              f"coverage {g['coverage']:.2f}, near-copies {g['near_copies']})")
    return summary


# -- figures ---------------------------------------------------------------------------------


def figures(work: Path, out: Path, neu_rows: dict | None) -> None:
    """docs/figures/synth_procedural.png (the three kinds on magnetic tile, with masks),
    synth_gan.png (a NEU GAN's samples beside the real rare images it learnt from) and
    synth_neu.png (the NEU table as bars)."""
    from sightwise.evaluate.figures import new_figure, save_figure
    from sightwise.synth.procedural import KINDS, make_defect

    free = sorted((DATASETS / "magnetic_tile" / "images" / "Free").glob("*.jpg"))[:8]
    images = _decode(free)
    fig = new_figure(12, 6.5)
    for col in range(4):
        for row, kind in enumerate(KINDS):
            k = (col + 4 * row) % len(images)
            rng = np.random.default_rng([col, row])
            img, mask = make_defect(images[k], kind, rng, [im for j, im in enumerate(images) if j != k])
            ax = fig.add_subplot(3, 8, row * 8 + 2 * col + 1)
            ax.imshow(img)
            ax.set_title(kind, fontsize=8)
            ax.set_axis_off()
            ax = fig.add_subplot(3, 8, row * 8 + 2 * col + 2)
            ax.imshow(mask, cmap="gray")
            ax.set_title("mask", fontsize=8)
            ax.set_axis_off()
    save_figure(fig, out / "synth_procedural.png")
    for kind in KINDS:  # speed, on the same tiles (about 250 x 500 px)
        t0 = time.perf_counter()
        for i, image in enumerate(images):
            make_defect(image, kind, np.random.default_rng(i), images[:i] + images[i + 1:])
        print(f"{kind}: {1000 * (time.perf_counter() - t0) / len(images):.0f} ms per image")
    gan_dirs = sorted(work.glob("neu/*_s0/gan"))
    if gan_dirs:
        g = gan_dirs[0]
        cls = g.parent.name.rsplit("_s", 1)[0]
        fake = _decode(sorted((g / cls).glob("*.png"))[:16])
        real = _decode(json.loads((g / "_gan" / "summary.json").read_text())["train_sources"][cls])
        fig = new_figure(12, 3.4)
        for i, im in enumerate(fake):
            ax = fig.add_subplot(2, 13, (i // 8) * 13 + i % 8 + 1)
            ax.imshow(im)
            ax.set_axis_off()
        for i, im in enumerate(real[:10]):
            ax = fig.add_subplot(2, 13, (i // 5) * 13 + 9 + i % 5)
            ax.imshow(im)
            ax.set_axis_off()
        fig.suptitle(f"NEU '{cls}': 16 GAN samples (64 px, left) and the 10 real training images (right)",
                     fontsize=9)
        save_figure(fig, out / "synth_gan.png")
    if neu_rows:
        fig = new_figure(10, 3.6)
        for p, metric in enumerate(("rare_recall", "macro_f1")):
            ax = fig.add_subplot(1, 2, p + 1)
            vals = [_mean_ci([r[c][metric] for r in neu_rows.values()]) for c in CONDITIONS]
            ax.bar(range(len(CONDITIONS)), [v[0] for v in vals],
                   yerr=[[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]], capsize=3,
                   color=["#888", "#6a9", "#69c", "#c96", "#36a", "#a63"])
            ax.set_xticks(range(len(CONDITIONS)), [c.replace(": ", ":\n") for c in CONDITIONS],
                          fontsize=7, rotation=20)
            lo = min(v[1] for v in vals)
            ax.set_ylim(max(0.0, lo - 0.05), 1.0)
            ax.set_title(f"{metric.replace('_', ' ')} on the test split (mean, 95 % CI over "
                         f"{len(neu_rows)} settings)", fontsize=8)
        save_figure(fig, out / "synth_neu.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("tile", "neu", "all"), default="all")
    ap.add_argument("--figures", type=Path, help="also draw the guide's figures into this folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sightwise-synth-bench"))
    ap.add_argument("--threads", type=int, default=2)
    # The three classes a 10-image probe misses most often (rare recall 0.84-0.98 without
    # synthetic data; crazing, patches and pitted surface are at 0.98-1.0: nothing to gain).
    ap.add_argument("--classes", default="inclusion,scratches,rolled-in_scale")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=100, help="synthetic images per setting and kind")
    ap.add_argument("--gan-budget", default="6m")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ratio = None
    if args.part in ("tile", "all"):
        rows = tile(args.work / "tile", args.threads)
        print_tile(rows)
        ratio = rows["bank + synthetic head"]["fit_seconds"] / rows["memory bank"]["fit_seconds"]
        print(f"fit time with --synthetic / without: ratio={ratio:.2f} ({os.cpu_count()} cores)")
    if args.part in ("neu", "all"):
        from sightwise.config import parse_duration

        rows = neu(args.work / "neu", args.classes.split(","), [int(v) for v in args.seeds.split(",")],
                   args.n, parse_duration(args.gan_budget), args.threads)
        summary = print_neu(rows)
        (args.work / "neu_summary.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
        if args.figures:
            figures(args.work, args.figures, rows)
        ratio = summary["guardrail: gan"]["macro_f1"][0] / summary["none"]["macro_f1"][0]
        print(f"macro-F1 with the guardrail (offered GAN images) / without synthetic data: "
              f"ratio={ratio:.4f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
