"""Claim: our fine-tune loop trains faster than a plain PyTorch loop on the same model/data.

    python bench/train_throughput.py [DATA] [--n 192] [--size 224] [--steps 6]

Ours: images decoded and resized once into the uint8 cache (sightwise.data.cache),
per-image augmentation of uint8 tensors (torchvision v2), channels_last, and the optimiser
of sightwise.train.finetune (fused AdamW). Reference: the plain loop most scripts use: a
Dataset that opens and decodes every JPEG every epoch with Pillow, PIL-space
RandomResizedCrop + flip + ToTensor + Normalize (torchvision v2), default (contiguous NCHW)
layout, a DataLoader with no workers, torch.optim.AdamW with its defaults. Same model
(EfficientNet-Lite0, ImageNet weights, full fine-tuning), same optimiser algorithm and
settings, batch size and images. Ours also keeps freed memory for reuse
(sightwise.train.allocator, as `fit` does), which changes the whole process, so each side
runs in its own process; the two are timed in alternating rounds (one process per side and
round, after one untimed warm-up step); the last line is
`ratio=<ours / reference images per second>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from sightwise.data.cache import build_cache
from sightwise.data.datasets import load_dataset
from sightwise.data.demo import make_texture_dataset
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import build_classifier
from sightwise.train.allocator import keep_freed_memory
from sightwise.train.augment import augment_batch, make_augment, to_input
from sightwise.train.finetune import make_optimizer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/neu_det/images"


def reference_steps(model, opt, paths, labels, size, batch, steps):
    """Plain loop: decode every file every time, PIL transforms, contiguous tensors."""
    tf = v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0)), v2.RandomHorizontalFlip(),
                     v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.5] * 3, [0.5] * 3)])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    t0 = time.perf_counter()
    for s in range(steps):
        idx = [(s * batch + i) % len(paths) for i in range(batch)]
        x = torch.stack([tf(Image.open(paths[i]).convert("RGB")) for i in idx])
        y = torch.as_tensor([labels[i] for i in idx])
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def our_steps(model, opt, cache_images, labels, pre, batch, steps):
    """Our loop's per-step work: cached uint8 -> augment -> channels_last -> step."""
    aug = make_augment(pre.size, "default")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    t0 = time.perf_counter()
    for s in range(steps):
        idx = np.array([(s * batch + i) % len(labels) for i in range(batch)])
        xb = to_input(augment_batch(torch.from_numpy(cache_images[idx]), aug), pre)
        loss = loss_fn(model(xb), torch.from_numpy(labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def run_side(side: str, args) -> float:
    """One side in this process: its data and model, a warm-up step, then the timed steps."""
    ds = load_dataset(Path(args.data))
    rng = np.random.default_rng(0)
    ds.samples = [ds.samples[i] for i in rng.permutation(len(ds.samples))[: args.n]]
    pre = Preprocessing(size=args.size)
    cache, _ = build_cache(ds, pre, progress=False)
    labels = cache.labels
    if side == "ours":
        keep_freed_memory()
        model = build_classifier("efficientnet_lite0", len(ds.classes), True).to(
            memory_format=torch.channels_last)
        opt = make_optimizer(model, lr=3e-4, head_lr=3e-4, weight_decay=0.01)
        our_steps(model, opt, cache.images, labels, pre, args.batch, 1)
        return our_steps(model, opt, cache.images, labels, pre, args.batch, args.steps)
    if args.reference_keeps_memory:  # the allocator setting alone, without our loop
        keep_freed_memory()
    paths = [s.source for s in cache.samples]
    model = build_classifier("efficientnet_lite0", len(ds.classes), True)
    opt = torch.optim.AdamW(model.parameters(), 3e-4)  # weight_decay defaults to 0.01
    reference_steps(model, opt, paths, labels, args.size, args.batch, 1)
    return reference_steps(model, opt, paths, labels, args.size, args.batch, args.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reference-keeps-memory", action="store_true",
                    help="give the reference loop the same allocator setting as ours")
    ap.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # a child process: time one side, print its images/s
        print(json.dumps({"images_per_second": run_side(args.side, args)}))
        return
    data = Path(args.data)
    if not data.exists():
        data = make_texture_dataset(Path("/tmp/sightwise-bench-textures"))
    child = [sys.executable, __file__, str(data), "--n", str(args.n), "--size", str(args.size),
             "--batch", str(args.batch), "--steps", str(args.steps)]
    if args.reference_keeps_memory:
        child.append("--reference-keeps-memory")
    ours, ref = [], []
    for _ in range(args.rounds):
        for side, out in (("reference", ref), ("ours", ours)):
            res = subprocess.run(child + ["--side", side], capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"the {side} run failed:\n{res.stderr[-3000:]}")
            out.append(json.loads(res.stdout.strip().splitlines()[-1])["images_per_second"])
    o, r = float(np.median(ours)), float(np.median(ref))
    print(f"data={data} n={args.n} size={args.size} batch={args.batch} "
          f"steps/round={args.steps} rounds={args.rounds} cores={os.cpu_count()} "
          f"torch_threads={torch.get_num_threads()}")
    kept = ", freed memory kept" if args.reference_keeps_memory else ""
    print(f"reference (decode every epoch, contiguous{kept}): {r:.2f} img/s  "
          f"rounds={np.round(ref, 2)}")
    print(f"ours (uint8 cache, channels_last, freed memory kept): {o:.2f} img/s  "
          f"rounds={np.round(ours, 2)}")
    print(f"ratio={o / r:.3f}")


if __name__ == "__main__":
    main()
