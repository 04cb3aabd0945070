"""Procedural defects: defect-like images made from good ones, each with its mask.

Three kinds, each from a published recipe (written here from the papers, not copied):
- `cutpaste` (Li et al., "CutPaste", CVPR 2021): a rectangle cut from the image,
  colour-jittered, rotated and pasted elsewhere on the same image.
- `perlin` (Zavrtanik et al., "DRAEM", ICCV 2021): a thresholded Perlin-noise mask shapes
  where a texture (another image, flipped/rotated/re-toned) is blended into the image,
  I' = (1 - M) I + M ((1 - beta) I + beta A).
- `blend` (Schlueter et al., "Natural Synthetic Anomalies", ECCV 2022): a patch of another
  image Poisson-blended in (Perez et al., SIGGRAPH 2003): inside the patch the result keeps
  the source's gradients and meets the target on the patch's border, so there is no seam;
  solved exactly with a discrete sine transform (the 5-point Laplacian's eigenbasis).

The mask is, by construction, exactly the set of pixels that changed: pixels whose change
is at most `TOL` grey levels are set back to the original, the rest form the mask. A tool
that trusts the mask (the inspection head, a segmentation model) is then never told a pixel
is defective when it looks untouched. Torch-free (numpy, scipy, Pillow); milliseconds per
image; every image is seeded on its own (seed, index), so one image can be remade alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from sightwise.core import atomic_write_bytes
from sightwise.data.decode import decode_image, is_image_path
from sightwise.errors import DataError, ImageDecodeError

KINDS = ("cutpaste", "perlin", "blend")
TOL = 6  # grey levels: smaller changes are undone, so the mask is what a person could see
MIN_AREA = 0.002  # of the image: a draw that changed less is drawn again
TRIES = 12


def make_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                sources: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) good image -> (defective image, bool mask of the changed pixels).
    `sources` are other good images (perlin and blend take their texture from one; without
    any, from the image itself, transformed)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(f"expected an RGB image of at least 8 x 8 pixels, got {image.shape}")
    make = {"cutpaste": _cutpaste, "perlin": _perlin, "blend": _blend}[kind]
    h, w = image.shape[:2]
    best = (image.copy(), np.zeros((h, w), bool))
    for _ in range(TRIES):  # a flat texture can swallow a change: draw again (bounded)
        out, region = make(image, rng, sources)
        out, mask = _changed(image, out, region)
        if mask.sum() >= max(4, MIN_AREA * h * w):
            return out, mask
        if mask.sum() > best[1].sum():
            best = (out, mask)
    return best


def _changed(image: np.ndarray, out: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo changes outside `region` and changes of at most TOL; the mask is the rest."""
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2)
    mask = region & (diff > TOL)
    return np.where(mask[..., None], out, image).astype(np.uint8), mask


# -- CutPaste --------------------------------------------------------------------------------


def _cutpaste(image: np.ndarray, rng: np.random.Generator, _sources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    area = rng.uniform(0.02, 0.15) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(round(np.sqrt(area * aspect)), 2, h - 1))
    pw = int(np.clip(round(np.sqrt(area / aspect)), 2, w - 1))
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = _jitter(image[y0:y0 + ph, x0:x0 + pw].astype(np.float32), rng)
    shape = np.ones((ph, pw), np.float32)
    angle = rng.uniform(-45, 45)  # CutPaste-scar's rotation; also hides the rectangle's edges
    patch = ndimage.rotate(patch, angle, axes=(1, 0), reshape=True, order=1, mode="constant")
    shape = ndimage.rotate(shape, angle, axes=(1, 0), reshape=True, order=0, mode="constant") > 0.5
    patch, shape = patch[: h - 1, : w - 1], shape[: h - 1, : w - 1]
    qh, qw = shape.shape
    ty, tx = rng.integers(0, h - qh + 1), rng.integers(0, w - qw + 1)
    out = image.astype(np.float32)
    view = out[ty:ty + qh, tx:tx + qw]
    view[shape] = patch[shape]
    region = np.zeros((h, w), bool)
    region[ty:ty + qh, tx:tx + qw] = shape
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


def _jitter(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast jitter (CutPaste's colour jitter, greyscale-safe)."""
    mean = patch.mean()
    contrast = rng.uniform(0.6, 1.5)
    shift = rng.choice([-1, 1]) * rng.uniform(15, 50)
    return (patch - mean) * contrast + mean + shift


# -- Perlin-shaped texture blend (DRAEM) -----------------------------------------------------


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise (Perlin, SIGGRAPH 1985/2002) in about [-0.7, 0.7]: random unit
    gradients on a (res_y + 1) x (res_x + 1) lattice, each pixel the quintic-faded
    interpolation of its cell's four corner dot products."""
    ry, rx = res
    h, w = shape
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, ry, h, endpoint=False)
    x = np.linspace(0, rx, w, endpoint=False)
    yi, xi = y.astype(int), x.astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return top * (1 - uy) + bottom * uy


def _perlin(image: np.ndarray, rng: np.random.Generator, sources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    res = (2 ** int(rng.integers(1, 5)), 2 ** int(rng.integers(1, 5)))  # DRAEM: 2^k lattices
    region = perlin_noise((h, w), res, rng) > 0.3  # DRAEM thresholds at 0.5 of its scale
    texture = _texture(image, sources, rng)
    beta = rng.uniform(0.3, 1.0)  # DRAEM: opacity of the foreign texture
    out = image.astype(np.float32) * (1 - beta) + texture * beta
    out = np.where(region[..., None], out, image)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


def _texture(image: np.ndarray, sources, rng: np.random.Generator) -> np.ndarray:
    """An anomaly source at the image's size: another image (or this one), flipped,
    turned a quarter, re-toned (DRAEM's augmentations of its texture source)."""
    h, w = image.shape[:2]
    src = sources[int(rng.integers(len(sources)))] if len(sources) else image
    src = np.rot90(src, int(rng.integers(4)))
    if rng.random() < 0.5:
        src = src[:, ::-1]
    if src.shape[:2] != (h, w):
        src = np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((w, h), Image.Resampling.BILINEAR))
    src = src.astype(np.float32)
    if rng.random() < 0.3:
        src = 255.0 - src  # inversion
    return _jitter(src, rng)


# -- Poisson-blended patch (NSA) -------------------------------------------------------------


def poisson_blend(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """f with the Laplacian of `source` inside and `target`'s values on the one-pixel
    border, both (h, w, c) float: f = source + u, u harmonic with u = target - source on
    the border, solved with DST-I (exact for the 5-point Laplacian on a rectangle)."""
    d = (target - source).astype(np.float64)
    h, w = d.shape[:2]
    if h < 3 or w < 3:
        return target.astype(np.float64)
    # Interior unknowns: 4 u_ij - sum(neighbours) = 0; known border values go to the right.
    rhs = np.zeros((h - 2, w - 2) + d.shape[2:])
    rhs[0] += d[0, 1:-1]
    rhs[-1] += d[-1, 1:-1]
    rhs[:, 0] += d[1:-1, 0]
    rhs[:, -1] += d[1:-1, -1]
    ky = np.arange(1, h - 1)[:, None]
    kx = np.arange(1, w - 1)[None, :]
    eig = 4 - 2 * np.cos(np.pi * ky / (h - 1)) - 2 * np.cos(np.pi * kx / (w - 1))
    coef = fft.dstn(rhs, type=1, axes=(0, 1), norm="ortho")
    u_in = fft.idstn(coef / (eig[..., None] if d.ndim == 3 else eig), type=1, axes=(0, 1), norm="ortho")
    u = d.copy()
    u[1:-1, 1:-1] = u_in
    return source + u


def _blend(image: np.ndarray, rng: np.random.Generator, sources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph = int(rng.integers(max(4, h // 10), max(5, h // 3) + 1))
    pw = int(rng.integers(max(4, w // 10), max(5, w // 3) + 1))
    src = sources[int(rng.integers(len(sources)))] if len(sources) else np.rot90(image, 2)
    src = np.rot90(src, int(rng.integers(4)))
    if src.shape[0] < ph or src.shape[1] < pw:
        src = np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((max(pw, src.shape[1]),
                                                                           max(ph, src.shape[0]))))
    sy, sx = rng.integers(0, src.shape[0] - ph + 1), rng.integers(0, src.shape[1] - pw + 1)
    patch = _jitter(src[sy:sy + ph, sx:sx + pw].astype(np.float32), rng)  # NSA: re-toned patch
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out = image.astype(np.float64)
    out[ty:ty + ph, tx:tx + pw] = poisson_blend(out[ty:ty + ph, tx:tx + pw], patch)
    region = np.zeros((h, w), bool)
    region[ty:ty + ph, tx:tx + pw] = True
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


# -- folders -----------------------------------------------------------------------------------


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively, sorted; links not followed)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    return sorted(f for f in root.rglob("*") if f.is_file() and not f.is_symlink() and is_image_path(f))


def read_images(files: Sequence[Path], log=print) -> tuple[list[np.ndarray], list[Path]]:
    """Decode each file to uint8 RGB; unreadable ones are reported by path and skipped."""
    images, kept = [], []
    for f in files:
        try:
            images.append(np.asarray(decode_image(f), np.uint8))
            kept.append(f)
        except ImageDecodeError as exc:
            log(f"skipped {f}: {exc}")
    return images, kept


def write_procedural(good: str | Path, out: str | Path, kind: str, *, n: int | None = None,
                     masks: bool = False, seed: int = 0, progress: bool = True,
                     log=print) -> list[Path]:
    """Write `n` defect images made from the images under `good` (default: one per good
    image). With `masks`: out/images/*.png and out/masks/*.png with equal stems (0/255 PNG);
    without: out/*.png. Image i starts from good image i mod len and is seeded (seed, i)."""
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    images, files = read_images(list_images(good), log)
    if not images:
        raise DataError(f"{good}: no readable images")
    if n is not None and n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    n = len(images) if n is None else n
    out = Path(out)
    img_dir, mask_dir = (out / "images", out / "masks") if masks else (out, None)
    img_dir.mkdir(parents=True, exist_ok=True)
    if mask_dir:
        mask_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in tqdm(range(n), desc=f"synth {kind}", unit="img", disable=not progress):
        k = i % len(images)
        others = [im for j, im in enumerate(images) if j != k] if kind != "cutpaste" else []
        rng = np.random.default_rng([seed, i])
        if len(others) > 8:  # a few sources are enough and keep the list cheap
            others = [others[j] for j in rng.choice(len(others), 8, replace=False)]
        image, mask = make_defect(images[k], kind, rng, others)
        stem = f"{kind}_{i:05d}_{files[k].stem}"
        written.append(atomic_write_bytes(img_dir / f"{stem}.png", _png(image)))
        if mask_dir:
            atomic_write_bytes(mask_dir / f"{stem}.png", _png((mask * 255).astype(np.uint8)))
    return written


def _png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()
