"""A discriminative head on frozen patch features, trained with synthetic defects
(`inspect fit --synthetic`), alone or combined with the memory bank's distances.

SimpleNet (Liu et al., CVPR 2023): a linear feature adaptor and a small MLP discriminator
learn to tell good patch features from "anomalous" ones, made by adding Gaussian noise to
adapted good features; its truncated L1 loss pushes good scores above +0.5 and anomalous
ones below -0.5. We add a second source of anomalous patches: the patches that procedural
defects (CutPaste, Perlin texture blends, Poisson-blended patches; sightwise.synth.procedural)
cover on copies of the fit images, labelled from their masks. Patches of those copies away
from the defect count as good, so the head learns that a defect image is mostly normal.

Fitting uses torch (lazily imported); scoring is numpy: standardise, adaptor, MLP, one
matrix product each, so `Detector` stays torch-free. With `mode="combined"` the head's
patch scores and the memory bank's distances are each standardised by their mean and
standard deviation over held-out good images' patches and averaged; the image score is the
combined map's maximum over the image's own patches, `border` in from the edges (as
PatchCore's).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sightwise.anomaly.patchcore import PatchCore, _inner, flatten_patches
from sightwise.errors import BundleError

HEAD_FILE = "discriminator.npz"
MODES = ("combined", "head")
_ARRAYS = ("mean", "std", "adapt_w", "adapt_b", "w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 256  # SimpleNet uses 1024 on 1536-d features; ours are 472-d
    noise: float = 0.5  # std of the Gaussian perturbation, in standardised feature units
    steps: int = 1500
    batch: int = 512  # good patches per step (and as many anomalous ones)
    lr: float = 1e-3
    margin: float = 0.5  # SimpleNet's truncation threshold
    kinds: tuple[str, ...] = ("cutpaste", "perlin", "blend")
    max_defect_images: int = 200
    positive_cover: float = 0.1  # a patch is a defect patch when this share of it is masked


DEFAULT_HEAD = HeadConfig()


class DiscriminatorHead:
    """The fitted head as numpy arrays; `patch_scores` gives anomaly scores (high = defect)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise BundleError(f"{HEAD_FILE} lacks {', '.join(missing)}")
        self.a = {k: np.asarray(arrays[k], np.float32) for k in _ARRAYS}

    def logits(self, patches: np.ndarray) -> np.ndarray:
        """(n, C) patch features -> (n,) discriminator outputs (high = good)."""
        a = self.a
        z = (patches - a["mean"]) / a["std"]
        z = z @ a["adapt_w"].T + a["adapt_b"]
        h = z @ a["w1"].T + a["b1"]
        h = np.where(h > 0, h, 0.2 * h)  # LeakyReLU(0.2), as SimpleNet's discriminator
        return (h @ a["w2"].T + a["b2"])[:, 0]

    def patch_scores(self, features: np.ndarray) -> np.ndarray:
        n, _, h, w = features.shape
        return -self.logits(flatten_patches(features)).reshape(n, h, w)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.a)
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path) -> DiscriminatorHead:
        with np.load(path, allow_pickle=False) as z:  # never unpickle a bundle's file
            return cls({k: z[k] for k in z.files})


class CombinedScorer:
    """PatchCore's `score(features, content)` interface over the head (and the bank)."""

    def __init__(self, core: PatchCore, head: DiscriminatorHead, norm: dict, mode: str):
        if mode not in MODES:
            raise ValueError(f"synthetic mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.core, self.head, self.norm, self.mode = core, head, norm, mode
        self.border = core.border
        self.memory_bank = core.memory_bank

    def maps(self, features: np.ndarray, batch: int = 16) -> np.ndarray:
        n = self.norm
        z = (self.head.patch_scores(features) - n["head_mean"]) / n["head_std"]
        if self.mode == "head":
            return z.astype(np.float32)
        _, bank = self.core.score(features, None, batch)
        return (0.5 * (z + (bank - n["bank_mean"]) / n["bank_std"])).astype(np.float32)

    def score(self, features: np.ndarray, content: np.ndarray | None = None,
              batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        maps = self.maps(features, batch)
        n = len(maps)
        if content is None:
            content = np.ones(maps.shape, bool)
        inner = [_inner(c, self.border) for c in np.asarray(content, bool)]
        scores = np.array([m[c].max() for m, c in zip(maps, inner, strict=True)], np.float32)
        return (scores if n else np.zeros(0, np.float32)), maps


def attach_head(core: PatchCore, bundle) -> PatchCore | CombinedScorer:
    """The scorer a detector bundle asks for: its memory bank alone, or with the head."""
    info = bundle.meta.section("anomaly").get("synthetic")
    if not info:
        return core
    try:
        norm = {k: float(info["normalisation"][k]) for k in
                ("head_mean", "head_std", "bank_mean", "bank_std")}
        mode = str(info["mode"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{bundle.path}: bundle.json anomaly.synthetic is incomplete ({exc})") from None
    return CombinedScorer(core, DiscriminatorHead.load(bundle.file(HEAD_FILE)), norm, mode)


# -- fitting (torch) ---------------------------------------------------------------------------


def fit_synthetic(core: PatchCore, feats: np.ndarray, content: np.ndarray, fit_files: list[Path],
                  held: list[Path], pre, extractor: Path, out: Path, mode: str, seed: int = 0,
                  threads: int | None = None, cfg: HeadConfig | None = None,
                  log=print) -> tuple[CombinedScorer, dict]:
    """Train the head on the fit images' patch features and procedural defects made from
    those images; write it to out/HEAD_FILE; return the scorer and bundle.json's section."""
    from sightwise.anomaly.fit import _onnx_features  # fit.py imports torch; so do we

    if mode not in MODES:
        raise ValueError(f"synthetic mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = cfg or DEFAULT_HEAD
    t0 = time.perf_counter()
    x_def, m_def, sizes = defect_inputs(fit_files, pre, cfg, seed)
    f_def = _onnx_features(extractor, x_def, threads)
    good = flatten_patches(feats)[np.asarray(content, bool).reshape(-1)]
    positive, negative = label_patches(f_def, m_def, content_of(pre, sizes, f_def.shape[2:]), cfg)
    t_data = time.perf_counter() - t0
    head, losses = train_head(np.concatenate([good, negative]), positive, cfg, seed, threads)
    from sightwise.anomaly.fit import load_batch

    x_held, _, held_sizes = load_batch(held, pre)
    f_held = _onnx_features(extractor, x_held, threads)
    c_held = content_of(pre, held_sizes, f_held.shape[2:])
    norm = normalisation(core, head, f_held, c_held)
    from sightwise.core import atomic_write_bytes

    atomic_write_bytes(out / HEAD_FILE, head.to_bytes())
    info = {"mode": mode, "method": "SimpleNet-style discriminator (noise + procedural defects)",
            "kinds": list(cfg.kinds), "n_defect_images": int(len(x_def)),
            "patches": {"good": int(len(good) + len(negative)), "defect": int(len(positive))},
            "noise_std": cfg.noise, "hidden": cfg.hidden, "steps": cfg.steps,
            "final_loss": float(np.mean(losses[-50:])), "normalisation": norm,
            "seconds": {"defects_and_features": round(t_data, 2),
                        "total": round(time.perf_counter() - t0, 2)}}
    log(f"synthetic head: {len(x_def)} defect images, {len(positive)} defect patches, "
        f"loss {info['final_loss']:.3f}, {info['seconds']['total']:.0f} s")
    return CombinedScorer(core, head, norm, mode), info


def content_of(pre, sizes, grid) -> np.ndarray:
    from sightwise.anomaly.detector import content_grid

    return content_grid(pre, sizes, tuple(grid))


def defect_inputs(files: list[Path], pre, cfg: HeadConfig, seed: int):
    """Procedural defects on (a seeded subset of) the fit images, at their own size, then
    resized like any input: -> (normalised inputs, masks at input size, image sizes)."""
    from PIL import Image

    from sightwise.data.preprocess import normalize, resize_rgb
    from sightwise.synth.procedural import make_defect, read_images

    rng = np.random.default_rng([seed, 7])
    pick = sorted(rng.permutation(len(files))[: cfg.max_defect_images])
    images, _ = read_images([files[i] for i in pick], log=lambda m: None)
    if not images:
        raise ValueError("no readable fit images to make synthetic defects from")
    xs, masks, sizes = [], [], []
    for i, image in enumerate(images):
        r = np.random.default_rng([seed, i])
        others = [images[j] for j in r.choice(len(images), min(4, len(images)), replace=False)]
        out, mask = make_defect(image, cfg.kinds[i % len(cfg.kinds)], r, others)
        xs.append(resize_rgb(Image.fromarray(out), pre))
        m3 = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        masks.append(resize_rgb(Image.fromarray(m3), pre)[..., 0] > 127)
        sizes.append((image.shape[1], image.shape[0]))
    return normalize(np.stack(xs), pre), np.stack(masks), sizes


def label_patches(feats: np.ndarray, masks: np.ndarray, content: np.ndarray, cfg: HeadConfig):
    """Defect-image patches -> (defect patches, clean patches). A cell is a defect patch
    when at least `positive_cover` of it is masked; clean when no masked pixel lies within
    one cell of it (its receptive field sees the defect otherwise); the rest are left out."""
    from scipy.ndimage import binary_dilation

    n, _, h, w = feats.shape
    s = masks.shape[1]
    cover = masks.reshape(n, h, s // h, w, s // w).mean(axis=(2, 4))
    pos = (cover >= cfg.positive_cover) & content
    near = np.stack([binary_dilation(c > 0, np.ones((3, 3), bool)) for c in cover])
    neg = ~near & content
    patches = flatten_patches(feats)
    return patches[pos.reshape(-1)], patches[neg.reshape(-1)]


def train_head(good: np.ndarray, defect: np.ndarray, cfg: HeadConfig, seed: int,
               threads: int | None) -> tuple[DiscriminatorHead, list[float]]:
    """SimpleNet's adaptor + discriminator with its truncated L1 loss. Anomalous patches
    each step: half adapted good patches plus Gaussian noise, half procedural defect patches
    (all noise when there are none)."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = good.mean(0)
    std = good.std(0) + 1e-6
    g = torch.from_numpy((good - mean) / std)
    d = torch.from_numpy((defect - mean) / std) if len(defect) else None
    dim = good.shape[1]
    adaptor = nn.Linear(dim, dim)
    disc = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.LeakyReLU(0.2), nn.Linear(cfg.hidden, 1))
    with torch.no_grad():  # start as the identity: the adaptor only has to learn a change
        adaptor.weight.copy_(torch.eye(dim))
        adaptor.bias.zero_()
    opt = torch.optim.Adam([*adaptor.parameters(), *disc.parameters()], lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        zg = adaptor(g[rng.integers(0, len(g), cfg.batch)])
        k = cfg.batch // 2 if d is not None else cfg.batch
        noisy = zg[:k] + cfg.noise * torch.randn(k, dim)
        anomal = [noisy] + ([adaptor(d[rng.integers(0, len(d), cfg.batch - k)])] if d is not None else [])
        s_good, s_bad = disc(zg)[:, 0], disc(torch.cat(anomal))[:, 0]
        loss = torch.relu(cfg.margin - s_good).mean() + torch.relu(cfg.margin + s_bad).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    arrays = {"mean": mean, "std": std,
              "adapt_w": adaptor.weight.detach().numpy(), "adapt_b": adaptor.bias.detach().numpy(),
              "w1": disc[0].weight.detach().numpy(), "b1": disc[0].bias.detach().numpy(),
              "w2": disc[2].weight.detach().numpy(), "b2": disc[2].bias.detach().numpy()}
    return DiscriminatorHead(arrays), losses


def normalisation(core: PatchCore, head: DiscriminatorHead, feats: np.ndarray,
                  content: np.ndarray) -> dict:
    """Mean and standard deviation of each map over held-out good images' own patches."""
    on = np.asarray(content, bool)
    h = head.patch_scores(feats)[on]
    b = core.score(feats, None)[1][on]
    return {"head_mean": float(h.mean()), "head_std": float(h.std() + 1e-6),
            "bank_mean": float(b.mean()), "bank_std": float(b.std() + 1e-6)}
