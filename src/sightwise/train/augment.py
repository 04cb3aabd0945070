"""Augmentation of cached uint8 batches with torchvision transforms v2.

The cache holds decoded, resized uint8 images; augmentation runs on those tensors, so no
epoch decodes a file. v2 transforms draw one set of random parameters per call, so each
image of the batch gets its own call (cheap at these sizes next to the network's step).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from sightwise.data.preprocess import Preprocessing


def make_augment(size: int, preset: str) -> v2.Transform | None:
    if preset == "none":
        return None
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if preset == "strong":
        # Textures, micrographs and scans have no "up": vertical flips are label-preserving.
        quarter_turns = [v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]
        ops += [v2.RandomVerticalFlip(), v2.RandomChoice(quarter_turns)]
    ops.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
    return v2.Compose(ops)


def to_input(
    batch_u8: torch.Tensor, pre: Preprocessing, *, channels_last: bool = True
) -> torch.Tensor:
    """uint8 (N,H,W,3) -> normalised float (N,3,H,W), channels_last memory by default."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def augment_batch(batch_u8: torch.Tensor, aug: v2.Transform | None) -> torch.Tensor:
    """Per-image random augmentation of a uint8 (N,H,W,3) batch; returns the same layout."""
    if aug is None:
        return batch_u8
    chw = batch_u8.permute(0, 3, 1, 2)
    out = torch.stack([aug(img) for img in chw])
    return out.permute(0, 2, 3, 1)
