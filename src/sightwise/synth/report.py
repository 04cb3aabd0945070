"""`sightwise synth report`: generated images against the real class, as an HTML page.

Features are our backbone's (EfficientNet-Lite0, ImageNet weights, pooled pre-logits, the
same features the linear probe and visual search use). The real images are brought to the
generated images' resolution first (then both are resized alike for the backbone), so the
comparison is of what the generator could have learnt, not of its output size. The real
images are the ones the generator trained on: those listed in OUT/_gan/summary.json, else
the class's training-split images of DATA as `train` splits it.
"""

from __future__ import annotations

import html as html_lib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.core import atomic_write_json
from sightwise.errors import DataError
from sightwise.synth.procedural import list_images, read_images
from sightwise.synth.quality import kid, memorisation, prdc


def real_sources(generated: Path, data: str | Path, cls: str, split_seed: int) -> list[str]:
    summary = generated / "_gan" / "summary.json"
    if summary.is_file():
        sources = json.loads(summary.read_text()).get("train_sources", {}).get(cls)
        if sources:
            return list(sources)
    from sightwise.data.datasets import load_dataset
    from sightwise.data.splits import assign_splits

    ds = assign_splits(load_dataset(data), seed=split_seed)
    if cls not in ds.classes:
        raise DataError(f"class {cls!r} is not in {data} (its classes: {', '.join(ds.classes)})")
    label = ds.classes.index(cls)
    return [s.source for s in ds.samples if s.label == label and s.split == "train"]


def backbone_features(images: list[np.ndarray], threads: int | None = None) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features of uint8 RGB images (any sizes)."""
    import torch

    from sightwise.data.preprocess import resize_rgb
    from sightwise.models.classifier import build_classifier
    from sightwise.models.registry import get_spec
    from sightwise.train.features import extract_features, frozen_extractor

    if threads:
        torch.set_num_threads(int(threads))
    pre = get_spec("efficientnet_lite0").preprocessing
    x = np.stack([resize_rgb(Image.fromarray(im), pre) for im in images])
    model = build_classifier("efficientnet_lite0", 2, pretrained=True).eval()
    return extract_features(frozen_extractor(model.backbone, pre, len(x)), x, pre, progress=False)


def quality_report(generated: str | Path, data: str | Path, cls: str, *, html: str | Path | None = None,
                   split_seed: int = 0, threads: int | None = None, log=print) -> dict:
    """KID (with its interval), precision/recall/density/coverage and near-copies of
    GENERATED/<cls> against the real class; writes the HTML page and a JSON beside it."""
    generated = Path(generated)
    folder = generated / cls
    if not folder.is_dir():
        raise DataError(f"{folder}: no generated images of class {cls!r}")
    fake, fake_files = read_images(list_images(folder), log)
    real, real_files = read_images([Path(s) for s in real_sources(generated, data, cls, split_seed)], log)
    if len(fake) < 3 or len(real) < 3:
        raise DataError(f"need at least 3 generated and 3 real images of {cls!r}, "
                        f"got {len(fake)} and {len(real)}")
    side = fake[0].shape[:2][::-1]
    real_small = [np.asarray(Image.fromarray(im).resize(side, Image.Resampling.BICUBIC)) for im in real]
    f_real = backbone_features(real_small, threads)
    f_fake = backbone_features(fake, threads)
    k = min(5, len(real) - 1, len(fake) - 1)
    res = {"class": cls, "n_generated": len(fake), "n_real": len(real),
           "kid": kid(f_real, f_fake), **prdc(f_real, f_fake, k=k)}
    mem = memorisation(f_real, f_fake)
    res["near_copies"] = mem["n_near_copies"]
    res["memorisation"] = [{"generated": str(fake_files[i]), "nearest_real": str(real_files[j]),
                            "distance": d, "ratio": r, "near_copy": c}
                           for i, (j, d, r, c) in enumerate(zip(mem["nearest"], mem["distance"],
                                                                mem["ratio"], mem["near_copy"], strict=True))]
    res["near_copy_rule"] = (f"distance to the nearest real image < {mem['threshold_ratio']} x that "
                             "image's distance to its own nearest real neighbour")
    html = Path(html) if html else generated / f"_report_{cls}.html"
    res["html"] = str(html)
    _write_page(html, res, fake, real_small, mem)
    atomic_write_json(html.with_suffix(".json"), res)
    log(f"{cls}: KID {res['kid']['value']:.4f} [{res['kid']['low']:.4f}, {res['kid']['high']:.4f}], "
        f"precision {res['precision']:.2f}, recall {res['recall']:.2f}, density {res['density']:.2f}, "
        f"coverage {res['coverage']:.2f}, {res['near_copies']} near-copies of {len(fake)}; {html}")
    return res


def _write_page(path: Path, res: dict, fake, real, mem) -> None:
    from sightwise.evaluate.figures import plot_images_grid
    from sightwise.evaluate.report import write_report

    figs = path.parent / f"{path.stem}_figures"
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(fake), min(16, len(fake)), replace=False))
    figures = {"Generated samples (random 16)": plot_images_grid(
        [fake[i] for i in pick], [f"#{i}" for i in pick], figs / "generated.png", ncols=8)}
    shown = real[:16]
    figures["Real training images of the class (resized to the generated size)"] = plot_images_grid(
        shown, [f"real {i}" for i in range(len(shown))], figs / "real.png", ncols=8)
    order = np.argsort(mem["ratio"])[:6]  # the closest pairs: where copying would show
    pairs, titles = [], []
    for i in order:
        j = mem["nearest"][i]
        pairs += [fake[i], real[j]]
        titles += [f"generated #{i}" + (" NEAR-COPY" if mem["near_copy"][i] else ""),
                   f"nearest real; ratio {mem['ratio'][i]:.2f}"]
    figures["Closest generated/real pairs (lowest distance ratio first)"] = plot_images_grid(
        pairs, titles, figs / "nearest.png", ncols=4)
    grids = sorted((path.parent / "_gan").glob("grid_step*.png"))
    if grids:  # the first, middle and last training grids
        for g in dict.fromkeys([grids[0], grids[len(grids) // 2], grids[-1]]):
            figures[f"Training progress: {g.stem} (EMA generator, fixed noise)"] = g
    k = res["kid"]
    rows = [("KID (x 1000; 0 = same distribution)", f"{1000 * k['value']:.2f} "
             f"[{1000 * k['low']:.2f}, {1000 * k['high']:.2f}] over {k['subsets']} subsets "
             f"of {k['subset_size']}"),
            ("Precision (generated inside the real manifold)", f"{res['precision']:.3f}"),
            ("Recall (real inside the generated manifold)", f"{res['recall']:.3f}"),
            ("Density (1 = as dense as real)", f"{res['density']:.3f}"),
            ("Coverage (real neighbourhoods hit)", f"{res['coverage']:.3f}"),
            (f"Near-copies (k-NN k={res['k']})", f"{res['near_copies']} of {res['n_generated']}: "
             + res["near_copy_rule"])]
    body = "".join(f"<tr><td>{html_lib.escape(a)}</td><td>{html_lib.escape(b)}</td></tr>" for a, b in rows)
    write_report(path, title=f"Generated images of {res['class']}: quality",
                 metrics={"split": "generated vs real training images", "n": res["n_generated"]},
                 figures=figures, sections=[("Quality against the real class", f"<table>{body}</table>")])
