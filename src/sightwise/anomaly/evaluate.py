"""`sightwise inspect evaluate`: image/pixel AUROC, PRO, P/R/F1 at the bundle's threshold,
the realised false-alarm rate on good images, and an HTML report with overlay grids.

Defects given as a folder of class folders are also broken down by class (each against all
the good images). With masks, two more pixel figures say where a pooled pixel AUROC loses:
`pixel_auroc_defect_images` pools only the defect images' pixels (good images left out), and
`pixel_auroc_within_image` is the mean over defect images of each one's own pixel AUROC
(its marked pixels against its unmarked ones): how well a map points at the defect inside
the part, whatever its level against other images.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.anomaly.detector import Detector
from sightwise.anomaly.metrics import (
    auroc_against,
    detection_counts,
    image_auroc,
    pixel_auroc,
    pro_score,
)
from sightwise.anomaly.scoring import list_images
from sightwise.data.decode import decode_image
from sightwise.errors import DataError, ImageDecodeError


def _mask_for(image: Path, defect_root: Path, masks_root: Path | None, size: int):
    """The mask mirroring `image` under `masks_root` (same relative path, .png), resized
    to the network's input grid (nearest, so it stays binary); None when absent."""
    if masks_root is None:
        return None
    f = masks_root / image.relative_to(defect_root).with_suffix(".png")
    if not f.is_file():
        return None
    m = Image.open(f).convert("L").resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(m) > 127


def _folder_links(root: Path) -> list[Path]:
    """Links to folders anywhere under `root`: the image listing does not follow them (a
    link can lead out of the tree, or round in a loop)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_symlink() and p.is_dir())


def side_images(path: str | Path, option: str) -> list[Path]:
    """The images of one side (--good or --defect). An empty side makes every figure
    meaningless (an AUROC needs both), so it is an error that names the folder; folder
    links that were left out are named too, whether or not other images were found."""
    root = Path(path)
    files = list_images(root)
    links = _folder_links(root)
    shown = ", ".join(str(p.relative_to(root)) for p in links[:3]) + (", ..." if len(links) > 3 else "")
    if not files:
        why = (f"; its folder links ({shown}) are not followed: pass the folders they point to"
               if links else " (folder links are not followed)")
        raise DataError(f"{option} {root}: no images found{why}")
    if links:
        print(f"warning: {option} {root}: {len(links)} folder link(s) not followed ({shown})",
              file=sys.stderr)
    return files


def _score_set(det: Detector, files: list[Path], batch: int = 16):
    scores, pixel_maps, kept, images = [], [], [], []
    for s in range(0, len(files), batch):
        ims, ok = [], []
        for f in files[s:s + batch]:
            try:
                ims.append(decode_image(f))
                ok.append(f)
            except ImageDecodeError as exc:
                print(f"skipped {f}: {exc}")
        for f, im, r in zip(ok, ims, det.inspect(ims), strict=True):
            scores.append(r.score)
            pixel_maps.append(det.pixel_map(r.patch_map, im.size).astype(np.float32))
            kept.append(f)
            images.append((im.copy(), r.patch_map))
    return np.asarray(scores), pixel_maps, kept, images


def evaluate_detector(detector: str | Path, good: str | Path, defect: str | Path,
                      masks: str | Path | None = None, report: str | Path | None = None,
                      threads: int | None = None, top: int = 8) -> dict:
    good_files, defect_files = side_images(good, "--good"), side_images(defect, "--defect")
    det = Detector(detector, threads=threads)
    size = det.pre.size
    g_scores, g_maps, g_files, g_imgs = _score_set(det, good_files)
    d_scores, d_maps, d_files, d_imgs = _score_set(det, defect_files)
    for got, option, folder in ((g_files, "--good", good), (d_files, "--defect", defect)):
        if not got:
            raise DataError(f"{option} {folder}: none of its images could be read")
    y = np.r_[np.zeros(len(g_scores), bool), np.ones(len(d_scores), bool)]
    scores = np.r_[g_scores, d_scores]
    counts = detection_counts(scores, y, det.threshold)
    result = {"image_auroc": image_auroc(scores, y), "pixel_auroc": None, "pro": None,
              "false_alarm_rate": counts["false_alarm_rate"], "f1": counts["f1"],
              "precision": counts["precision"], "recall": counts["recall"],
              "threshold": det.threshold, "threshold_mode": det.bundle.meta.raw.get("threshold_mode"),
              "n_good": len(g_scores), "n_defect": len(d_scores),
              "pixel_auroc_defect_images": None, "pixel_auroc_within_image": None}
    d_masks = [_mask_for(f, Path(defect), Path(masks) if masks else None, size) for f in d_files]
    if masks is not None:
        have = [i for i, m in enumerate(d_masks) if m is not None]
        if have:
            maps = np.stack(g_maps + [d_maps[i] for i in have])
            gt = np.concatenate([np.zeros((len(g_maps), size, size), bool),
                                 np.stack([d_masks[i] for i in have])])
            result.update(pixel_auroc=pixel_auroc(maps, gt), pro=pro_score(maps, gt),
                          pixel_auroc_defect_images=pixel_auroc(maps[len(g_maps):], gt[len(g_maps):]),
                          pixel_auroc_within_image=_mean_within(d_maps, d_masks, have),
                          n_masks=len(have))
            del maps, gt  # the per-class figures below sort a copy of the good maps
    classes = [_class_of(f, Path(defect)) for f in d_files]
    result["per_class"] = per_class_metrics(g_scores, d_scores, classes, det.threshold,
                                            g_maps, d_maps, d_masks)
    if report is not None:
        _write_report(Path(report), det, result, (g_scores, g_files, g_imgs),
                      (d_scores, d_files, d_imgs), top)
    return result


def _mean_within(maps, masks, idx) -> float | None:
    """Mean over images `idx` of each image's own pixel AUROC (images whose mask is empty or
    full have none and are left out)."""
    values = [auroc_against(maps[i][masks[i]], np.sort(maps[i][~masks[i]])) for i in idx]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _class_of(image: Path, defect_root: Path) -> str:
    """The class of a defect image: the first folder under `defect_root` it lies in; an
    image directly in `defect_root` is put in a class named after that folder."""
    parts = image.relative_to(defect_root).parts
    return parts[0] if len(parts) > 1 else defect_root.name


def per_class_metrics(good_scores, defect_scores, classes: list[str], threshold: float,
                      good_maps=None, defect_maps=None, defect_masks=None) -> dict[str, dict]:
    """Each defect class against all the good images: n, image AUROC, recall at `threshold`
    and, over the class's images that have a mask, the pixel AUROC over the good images'
    pixels and those images' pixels (the pooled figure restricted to one class), the mean
    of those images' own pixel AUROCs, and the class's share of all marked pixels (its
    weight in the pooled pixel AUROC, whose positives are the marked pixels)."""
    good_scores, defect_scores = np.asarray(good_scores), np.asarray(defect_scores)
    good_pixels = (np.sort(np.asarray(good_maps, np.float32).ravel())
                   if good_maps is not None and len(good_maps) else None)
    marked = sum(int(m.sum()) for m in defect_masks or [] if m is not None)
    out = {}
    for name in sorted(set(classes)):
        idx = [i for i, c in enumerate(classes) if c == name]
        s = defect_scores[idx]
        y = np.r_[np.zeros(len(good_scores), bool), np.ones(len(s), bool)]
        row = {"n": len(idx), "image_auroc": image_auroc(np.r_[good_scores, s], y),
               "recall": float(np.mean(s > threshold)), "pixel_auroc": None,
               "pixel_auroc_within_image": None, "defect_pixel_share": None}
        with_mask = [i for i in idx if defect_masks is not None and defect_masks[i] is not None]
        if with_mask and marked:  # needs no good image
            row["defect_pixel_share"] = sum(int(defect_masks[i].sum()) for i in with_mask) / marked
        if with_mask and good_pixels is not None:
            maps = np.stack([defect_maps[i] for i in with_mask])
            gt = np.stack([defect_masks[i] for i in with_mask])
            row["pixel_auroc"] = auroc_against(maps[gt], good_pixels, np.sort(maps[~gt]))
            row["pixel_auroc_within_image"] = _mean_within(defect_maps, defect_masks, with_mask)
        out[name] = row
    return out


def _grid(det: Detector, scores, files, imgs, order, path: Path) -> Path:
    from sightwise.evaluate.figures import plot_images_grid

    pics = [np.asarray(det.overlay(imgs[i][0], imgs[i][1])) for i in order]
    titles = [f"{files[i].name}\nscore {scores[i]:.3f}" for i in order]
    return plot_images_grid(pics, titles, path)


def _write_report(path: Path, det: Detector, result: dict, good, defect, top: int) -> None:
    from sightwise.evaluate.report import write_report

    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {}
    if len(good[0]):
        order = np.argsort(-good[0])[:top]
        figures["Highest-scoring good images (likeliest false alarms)"] = _grid(
            det, *good, order, path.with_name(path.stem + "_good.png"))
    if len(defect[0]):
        order = np.argsort(defect[0])[:top]
        figures["Lowest-scoring defects (likeliest misses)"] = _grid(
            det, *defect, order, path.with_name(path.stem + "_defect.png"))
    # write_report's headline table knows classification keys only; ours go in a section.
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in result.items() if k != "per_class")
    sections = [("Detection metrics", f"<table>{rows}</table>")]
    per_class = result.get("per_class") or {}
    if per_class:
        head = "".join(f"<th>{h}</th>" for h in ("class", "n", "image AUROC", "recall",
                                                 "pixel AUROC", "pixel AUROC within image",
                                                 "share of marked pixels"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in
                             (name, r["n"], r["image_auroc"], r["recall"], r["pixel_auroc"],
                              r["pixel_auroc_within_image"], r["defect_pixel_share"])) + "</tr>"
            for name, r in per_class.items())
        sections.append(("By defect class (each against all good images)",
                         f"<table><tr>{head}</tr>{body}</table>"))
    write_report(path, title="Defect inspection", figures=figures,
                 metrics={"split": "good + defect images given", "n": result["n_good"] + result["n_defect"]},
                 sections=sections)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
