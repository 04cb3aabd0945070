"""The runtime's input equals training's (load_one + to_input) within 1/255 per pixel, for
every resize mode and interpolation, on awkward images (alpha, 16-bit, grey, EXIF, odd
sizes)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sightwise.data.cache import load_one
from sightwise.data.decode import decode_image
from sightwise.runtime import Predictor
from sightwise.train.augment import to_input
from sightwise.types import Sample


def _write_images(folder) -> list[str]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 71, 3), dtype=np.uint8)
    out = []
    for name, img in [
        ("rgb.png", Image.fromarray(rgb)),
        ("rgba.png", Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (45, 71), dtype=np.uint8)]))),
        ("grey16.png", Image.fromarray(rng.integers(0, 65535, (33, 20), dtype=np.uint16))),
        ("grey.jpg", Image.fromarray(rgb[:, :, 0])),
        ("tall.webp", Image.fromarray(rgb).resize((13, 120))),
    ]:
        img.save(folder / name)
        out.append(str(folder / name))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    out.append(str(folder / "rotated.jpg"))
    return out


@pytest.mark.parametrize("resize, interpolation", [
    ("stretch", "bicubic"), ("stretch", "bilinear"),
    ("center-crop", "bicubic"), ("center-crop", "bilinear"), ("letterbox", "bicubic"),
])
def test_runtime_input_equals_training_input(exported, copy_bundle, tmp_path, resize,
                                             interpolation):
    bundle = copy_bundle(exported[0], tmp_path / "b", resize=resize,
                                  interpolation=interpolation, mean=[0.485, 0.456, 0.406],
                                  std=[0.229, 0.224, 0.225])
    p = Predictor(bundle)
    assert (p.preprocessing.resize, p.preprocessing.interpolation) == (resize, interpolation)
    folder = tmp_path / "img"
    folder.mkdir()
    paths = _write_images(folder)
    ours = p.preprocess([decode_image(x) for x in paths])
    train_u8 = np.stack([load_one(Sample(x, 0, "test", ""), p.preprocessing) for x in paths])
    theirs = to_input(torch.from_numpy(train_u8), p.preprocessing).numpy()
    std = np.asarray(p.preprocessing.std, np.float32).reshape(1, 3, 1, 1)
    assert np.abs(ours - theirs).max() * std.max() <= 1 / 255  # back in [0, 1] pixel units
    # and the rotated JPEG really was turned upright (45x71 -> 71x45 before resizing)
    assert decode_image(paths[-1]).size == (45, 71)
