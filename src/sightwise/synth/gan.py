"""A small class-conditional GAN that trains on 2 CPU cores within a wall-clock budget.

The parts, each the field's standard answer to one problem of small data and small compute:
- a DCGAN-shaped generator (Radford et al. 2016) conditioned by class-conditional BatchNorm
  (de Vries et al. 2017, as in SNGAN and BigGAN), and a discriminator with a projection
  head for the class (Miyato & Koyama, ICLR 2018);
- spectral normalisation of every discriminator layer (Miyato et al., ICLR 2018) and the
  hinge loss (Lim & Ye 2017), which keep the discriminator Lipschitz and its gradients useful;
- DiffAugment (Zhao et al., NeurIPS 2020): the same differentiable colour, translation and
  cutout augmentation applied to real and generated images, in both players' steps, so a
  discriminator that sees a few hundred images cannot simply memorise them;
- DCGAN's Adam settings (2e-4, beta1 0.5): with minutes of CPU the slower rates of the
  large-GAN recipes (1e-4 / 4e-4, beta1 0) had not left noise after 460 steps on NEU;
- an exponential moving average of the generator's weights (Karras et al. 2018; Yazici et
  al., ICLR 2019), which is what samples come from.

Classes are drawn uniformly for each batch, so the rare class is trained as often as the
others while sharing their features. Only the data's training split is used (the split
`train --split-seed` makes), so no validation or test image is ever seen by the generator.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sightwise.core import atomic_write_bytes, atomic_write_json
from sightwise.errors import DataError
from sightwise.train.budget import Budget

GAN_DIR = "_gan"  # training artefacts inside OUT; `train --synthetic` skips "_" folders
MIN_IMAGES = 5  # training images of a requested class below which the GAN refuses
SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class GanConfig:
    img_size: int = 64
    budget_s: float | None = 1200.0
    max_steps: int | None = None  # stop after this many generator steps (tests)
    batch: int = 16  # on a CPU more, smaller steps beat fewer large ones
    z_dim: int = 64
    ch: int = 16  # base width; 2 cores run about a step a second at 64 px
    lr_g: float = 2e-4  # DCGAN's rate and momentum: a short budget cannot wait for 1e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    ema: float = 0.999
    seed: int = 0
    split_seed: int = 0
    n_samples: int = 200
    grid_every_s: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.img_size not in SIZES:
            raise ValueError(f"--img-size must be one of {', '.join(map(str, SIZES))}, got {self.img_size}")
        if self.budget_s is None and self.max_steps is None:
            raise ValueError("a GAN needs a budget or a step limit")
        if self.n_samples < 1:
            raise ValueError("--n must be at least 1")


# -- networks ------------------------------------------------------------------------------------


class CondBN(nn.Module):
    """BatchNorm without its own affine; the scale and shift come from the class."""

    def __init__(self, ch: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = nn.Embedding(n_classes, ch)
        self.bias = nn.Embedding(n_classes, ch)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """z, class -> image in [-1, 1]: a 4x4 seed doubled by 4x4 stride-2 transposed convs
    (DCGAN's; on a CPU half the cost of nearest upsampling + 3x3 conv at the same width)."""

    def __init__(self, n_classes: int, size: int, z_dim: int, ch: int, out_ch: int = 3):
        super().__init__()
        n_up = int(math.log2(size // 4))
        widths = [ch * min(8, 2 ** (n_up - i)) for i in range(n_up + 1)]
        self.z_dim, self.w0 = z_dim, widths[0]
        self.fc = nn.Linear(z_dim, 4 * 4 * widths[0])
        self.convs = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)
                                   for a, b in zip(widths, widths[1:], strict=False))
        self.norms = nn.ModuleList(CondBN(w, n_classes) for w in widths)
        self.out = nn.Conv2d(widths[-1], out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.w0, 4, 4)
        for conv, norm in zip(self.convs, self.norms, strict=False):
            x = conv(F.relu(norm(x, y)))
        x = torch.tanh(self.out(F.relu(self.norms[-1](x, y))))
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey data: one channel


class Discriminator(nn.Module):
    """image, class -> score: strided 4x4 convs to 4x4, global sum pooling, then a linear
    term plus the projection <embed(class), features> (Miyato & Koyama 2018)."""

    def __init__(self, n_classes: int, size: int, ch: int):
        super().__init__()
        n_down = int(math.log2(size // 4))
        widths = [3] + [ch * min(8, 2 ** i) for i in range(n_down)]
        self.convs = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1))
                                   for a, b in zip(widths, widths[1:], strict=False))
        self.last = spectral_norm(nn.Conv2d(widths[-1], widths[-1], 3, padding=1))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        h = F.leaky_relu(self.last(x), 0.2).sum(dim=(2, 3))
        return self.linear(h)[:, 0] + (self.embed(y) * h).sum(1)


# -- DiffAugment -----------------------------------------------------------------------------------


def diff_augment(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zhao et al.'s 'color,translation,cutout' policy, differentiable in x (images in
    [-1, 1], N x 3 x S x S); every image draws its own parameters."""
    n, _, s, _ = x.shape

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=x.device)

    x = x + (rand(n, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean  # contrast
    shift = s // 8  # translation by up to 1/8 of the side, zero fill
    pad = F.pad(x, (shift,) * 4)
    dy = (rand(n) * (2 * shift + 1)).long()
    dx = (rand(n) * (2 * shift + 1)).long()
    rows = (torch.arange(s, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(s, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    x = pad[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    half = s // 2  # cutout: one square of half the side, anywhere (may overhang)
    cy = (rand(n) * (s + 1 - half % 2)).long()[:, None, None]
    cx = (rand(n) * (s + 1 - half % 2)).long()[:, None, None]
    yy, xx = torch.arange(s, device=x.device)[None, :, None], torch.arange(s, device=x.device)[None, None, :]
    keep = ~(((yy - cy).abs() <= half // 2) & ((xx - cx).abs() <= half // 2))
    return x * keep[:, None].to(x.dtype)


# -- data -------------------------------------------------------------------------------------------


def training_images(data: str | Path, classes: list[str], cfg: GanConfig, log=print):
    """The data's training split (as `train` makes it) at img_size: -> (uint8 images,
    labels, class names). Bad input stops here with one clear line."""
    from sightwise.data.cache import build_cache
    from sightwise.data.datasets import Dataset, load_dataset
    from sightwise.data.preprocess import Preprocessing
    from sightwise.data.splits import assign_splits

    ds = load_dataset(data)
    unknown = [c for c in classes if c not in ds.classes]
    if unknown:
        raise DataError(f"class {', '.join(map(repr, unknown))} is not in {data} "
                        f"(its classes: {', '.join(ds.classes)})")
    pre = Preprocessing(size=cfg.img_size, resize="stretch")
    cache, skipped = build_cache(ds, pre, progress=cfg.progress)
    for s in skipped:
        log(f"skipped {s.source}: {s.reason}")
    kept = assign_splits(Dataset(ds.classes, cache.samples, ds.root, ds.layout), seed=cfg.split_seed)
    train = np.array([s.split == "train" for s in kept.samples])
    images, labels = cache.images[train], np.array([s.label for s in kept.samples])[train]
    for c in classes:
        n = int((labels == ds.classes.index(c)).sum())
        if n < MIN_IMAGES:
            raise DataError(f"class {c!r} has {n} training image(s); the GAN needs at least "
                            f"{MIN_IMAGES} (the validation and test splits are never used)")
    sources = [s.source for s, t in zip(kept.samples, train, strict=True) if t]
    return images, labels, ds.classes, sources


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# -- training ---------------------------------------------------------------------------------------


@dataclass
class Players:
    """The generator, its moving average, the discriminator and their optimisers."""

    g: Generator
    g_ema: Generator
    d: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @classmethod
    def build(cls, n_classes: int, grey: bool, cfg: GanConfig) -> Players:
        g = Generator(n_classes, cfg.img_size, cfg.z_dim, cfg.ch, 1 if grey else 3)
        d = Discriminator(n_classes, cfg.img_size, cfg.ch)
        return cls(g, copy.deepcopy(g).eval(), d,
                   torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999)),
                   torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999)))

    def step(self, real: torch.Tensor, y: torch.Tensor, cfg: GanConfig, gen: torch.Generator,
             step: int) -> tuple[float, float]:
        """One discriminator and one generator step (hinge loss, DiffAugment on every image
        either player sees), then the moving average. -> (d loss, g loss)."""
        n = len(y)
        with torch.no_grad():
            fake = self.g(torch.randn(n, cfg.z_dim, generator=gen), y)
        d_loss = (F.relu(1 - self.d(diff_augment(real, gen), y)).mean()
                  + F.relu(1 + self.d(diff_augment(fake, gen), y)).mean())
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        fake = self.g(torch.randn(n, cfg.z_dim, generator=gen), y)
        g_loss = -self.d(diff_augment(fake, gen), y).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        _update_ema(self.g_ema, self.g, min(cfg.ema, (1 + step) / (10 + step)))  # warmed-up decay
        return float(d_loss.detach()), float(g_loss.detach())


def train_gan(data: str | Path, classes: list[str], out: str | Path, cfg: GanConfig = GanConfig(),
              log=print) -> dict:
    """Train within the budget; write OUT/<class>/*.png for each requested class, sample
    grids as it trains and the EMA generator's weights in OUT/_gan/. Returns a summary."""
    from tqdm.auto import tqdm

    if not classes:
        raise ValueError("name at least one --class to generate")
    images, labels, names, sources = training_images(data, classes, cfg, log)
    out = Path(out)
    art = out / GAN_DIR
    art.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    grey = bool(np.all(images[..., :1] == images))  # NEU and most inspection data
    p = Players.build(len(names), grey, cfg)
    real = _to_tensor(images)
    by_class = [np.flatnonzero(labels == c) for c in range(len(names))]
    present = [c for c, idx in enumerate(by_class) if len(idx)]
    rng = np.random.default_rng(cfg.seed)
    fixed_z = torch.randn(8 * min(8, len(classes)), cfg.z_dim, generator=gen)
    fixed_y = torch.tensor([names.index(c) for c in classes[:8] for _ in range(8)])
    budget = Budget(cfg.budget_s)
    history, grids, step, last_grid = [], [], 0, budget.elapsed()
    bar = tqdm(total=cfg.max_steps, desc="gan", unit="step", disable=not cfg.progress)
    while (cfg.max_steps is None or step < cfg.max_steps) and budget.left() > 0:
        ys = rng.choice(present, cfg.batch)  # classes uniformly: the rare one as often as any
        idx = np.array([rng.choice(by_class[c]) for c in ys])
        d_loss, g_loss = p.step(real[idx], torch.from_numpy(ys), cfg, gen, step)
        step += 1
        history.append({"step": step, "d_loss": d_loss, "g_loss": g_loss, "seconds": budget.elapsed()})
        bar.update(1)
        bar.set_postfix(d=f"{history[-1]['d_loss']:.2f}", g=f"{history[-1]['g_loss']:.2f}",
                        left=f"{max(0.0, budget.left()):.0f}s" if cfg.budget_s else "")
        if budget.elapsed() - last_grid >= cfg.grid_every_s:
            grids.append(save_grid(p.g_ema, fixed_z, fixed_y, art / f"grid_step{step:06d}.png"))
            last_grid = budget.elapsed()
    bar.close()
    if step == 0:
        raise DataError("the budget ended before the first training step; give the GAN more time")
    grids.append(save_grid(p.g_ema, fixed_z, fixed_y, art / f"grid_step{step:06d}.png"))
    written = {c: write_samples(p.g_ema, names.index(c), out / c, cfg, gen) for c in classes}
    summary = {"classes": names, "generated": {c: len(v) for c, v in written.items()},
               "train_images": {c: int((labels == names.index(c)).sum()) for c in classes},
               "train_sources": {c: [s for s, y in zip(sources, labels, strict=True)
                                     if y == names.index(c)] for c in classes},
               "n_train_total": int(len(labels)), "steps": step, "seconds": budget.elapsed(),
               "grey": grey, "grids": [str(p.relative_to(out)) for p in grids],
               "config": asdict(cfg)}
    _save_artefacts(art, p.g_ema, summary, history)
    log(f"gan: {step} steps in {summary['seconds']:.0f} s; wrote "
        + ", ".join(f"{n} {c}" for c, n in summary["generated"].items()) + f" image(s) to {out}")
    return summary


@torch.no_grad()
def _update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)  # BatchNorm statistics follow the live generator


@torch.no_grad()
def save_grid(g_ema: nn.Module, z: torch.Tensor, y: torch.Tensor, path: Path, cols: int = 8) -> Path:
    """One PNG: a row of samples per class, from fixed noise so grids compare over time."""
    from PIL import Image

    tiles = to_uint8(g_ema.eval()(z, y))
    rows = -(-len(tiles) // cols)
    s = tiles.shape[1]
    sheet = np.full((rows * (s + 2), cols * (s + 2), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = t
    return atomic_write_bytes(path, _png(Image.fromarray(sheet)))


@torch.no_grad()
def write_samples(g_ema: nn.Module, label: int, folder: Path, cfg: GanConfig,
                  gen: torch.Generator) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, cfg.n_samples, 64):
        k = min(64, cfg.n_samples - start)
        x = g_ema.eval()(torch.randn(k, cfg.z_dim, generator=gen), torch.full((k,), label))
        for i, tile in enumerate(to_uint8(x)):
            paths.append(atomic_write_bytes(folder / f"gan_{start + i:05d}.png", _png(Image.fromarray(tile))))
    return paths


def _save_artefacts(art: Path, g_ema: nn.Module, summary: dict, history: list[dict]) -> None:
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in g_ema.state_dict().items()}
    save_file(weights, str(art / "generator_ema.safetensors"))
    atomic_write_json(art / "summary.json", summary)
    atomic_write_bytes(art / "history.json", json.dumps(history).encode("utf-8"))
    _loss_figure(history, art / "losses.png")


def _loss_figure(history: list[dict], path: Path) -> None:
    from sightwise.evaluate.figures import new_figure, save_figure

    fig = new_figure(6, 3)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    for key in ("d_loss", "g_loss"):
        v = np.array([h[key] for h in history])
        k = max(1, len(v) // 50)  # a moving average: single steps are noise
        ax.plot(steps[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"), label=key)
    ax.set_xlabel("generator step")
    ax.legend()
    save_figure(fig, path)


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


__all__ = ["GanConfig", "train_gan", "diff_augment", "Generator", "Discriminator"]
