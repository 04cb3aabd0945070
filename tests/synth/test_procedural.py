"""Procedural defects: the mask is exactly the changed pixels, draws are seeded, the Poisson
blend solves the discrete Poisson equation (checked against a sparse direct solve), and the
command writes the contract's layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image
from scipy.sparse.linalg import spsolve
from typer.testing import CliRunner

from sightwise.synth.cli import synth_app
from sightwise.synth.procedural import KINDS, make_defect, perlin_noise, poisson_blend


def texture(seed: int, h: int = 48, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    grey = 120 + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6)) + rng.normal(0, 5, (h, w))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_exactly_the_changed_pixels(kind):
    for seed in range(5):
        image = texture(seed)
        out, mask = make_defect(image, kind, np.random.default_rng(seed), [texture(100 + seed)])
        changed = (out != image).any(axis=2)
        np.testing.assert_array_equal(mask, changed)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert mask.sum() >= 0.002 * mask.size  # a visible defect, not an empty draw


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_draws_repeat_and_differ_by_seed(kind):
    image, src = texture(1), [texture(2)]
    a = make_defect(image, kind, np.random.default_rng([7, 3]), src)
    b = make_defect(image, kind, np.random.default_rng([7, 3]), src)
    c = make_defect(image, kind, np.random.default_rng([8, 3]), src)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_poisson_blend_matches_a_sparse_direct_solve():
    """Reference: the 5-point discrete Poisson equation written out as a sparse system,
    lap(f) = lap(source) inside, f = target on the border (Perez et al. 2003, Eq. 7)."""
    rng = np.random.default_rng(0)
    h, w = 9, 12
    target, source = rng.uniform(0, 255, (h, w)), rng.uniform(0, 255, (h, w))
    inner = [(y, x) for y in range(1, h - 1) for x in range(1, w - 1)]
    index = {p: i for i, p in enumerate(inner)}
    a = sp.lil_matrix((len(inner), len(inner)))
    b = np.zeros(len(inner))
    for (y, x), i in index.items():
        a[i, i] = 4.0
        b[i] = 4 * source[y, x]
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            b[i] -= source[ny, nx]
            if (ny, nx) in index:
                a[i, index[(ny, nx)]] = -1.0
            else:
                b[i] += target[ny, nx]
    ref = target.copy()
    ref[1:-1, 1:-1] = spsolve(a.tocsr(), b).reshape(h - 2, w - 2)
    np.testing.assert_allclose(poisson_blend(target, source), ref, atol=1e-8)


def test_perlin_noise_vanishes_on_its_lattice():
    """Gradient noise is 0 at every lattice point (each corner's dot product with a zero
    offset); between them it varies, within about +-0.71 (sqrt(1/2))."""
    n = perlin_noise((64, 96), (4, 6), np.random.default_rng(0))
    np.testing.assert_allclose(n[::16, ::16], 0.0, atol=1e-12)
    assert n.std() > 0.05 and np.abs(n).max() <= np.sqrt(0.5) + 1e-9


def test_command_writes_images_and_masks_with_equal_stems(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        Image.fromarray(texture(i)).save(good / f"g{i}.png")
    (good / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = CliRunner().invoke(synth_app, ["procedural", str(good), "--out", str(out), "--kind", "blend",
                                         "--n", "5", "--masks", "--seed", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    images = sorted(p.stem for p in (out / "images").glob("*.png"))
    masks = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert images == masks and len(images) == 5
    assert "broken.png" in res.output  # reported by path, skipped
    for stem in images:
        img = np.asarray(Image.open(out / "images" / f"{stem}.png").convert("RGB"))
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        source = texture(int(stem.split("_g")[-1]))
        np.testing.assert_array_equal(mask > 0, (img != source).any(axis=2))


def test_bad_kind_is_one_line_and_exit_2(tmp_path):
    res = CliRunner().invoke(synth_app, ["procedural", str(tmp_path), "--out", str(tmp_path / "o"),
                                         "--kind", "sparkle"])
    assert res.exit_code == 2 and "kind" in res.output
