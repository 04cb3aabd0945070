"""Heat-map colouring and overlays with numpy + Pillow only (no matplotlib, no torch).

Shared by the training report, `sightwise explain`, the runtime, the server and the
defect-inspection heat maps, so every surface draws the same colours.

`overlay_cam` blends the colour map evenly over the whole image. `translucent_overlay`
lets the image show through where the map is low (the colour's weight grows with the
value), so the picture stays readable and only the hot regions are tinted;
`with_legend` adds the colour scale under a figure, so a reader knows what blue and red
mean.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_FIGURE_WIDTH = 320  # small images are enlarged so the legend's text stays readable


def _lut() -> np.ndarray:
    """A 256-entry jet-like colormap (dark blue -> cyan -> yellow -> dark red), (256,3) uint8:
    each channel is a clipped triangle, as in matplotlib's `jet` definition."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=1) * 255.0 + 0.5).astype(np.uint8)


JET = _lut()


def colorize(values: np.ndarray) -> np.ndarray:
    """(h,w) floats in [0,1] -> (h,w,3) uint8 through the jet-like LUT.

    >>> colorize(np.array([[0.0, 1.0]])).tolist()
    [[[0, 0, 128], [128, 0, 0]]]
    """
    idx = np.clip(np.rint(np.asarray(values, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return JET[idx]


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w) float map -> (H,W) float32 by bilinear interpolation; size is (W, H) as in PIL."""
    heat = Image.fromarray(np.ascontiguousarray(values, np.float32))  # mode F
    return np.asarray(heat.resize(size, Image.Resampling.BILINEAR), np.float32)


def overlay_cam(image: Image.Image, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the heat map over `image`: upsampled bilinearly to the image's own size,
    `alpha` = weight of the heat map (0: image only, 1: heat map only)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    coloured = Image.fromarray(colorize(upsample(cam, base.size)))
    return Image.blend(base, coloured, alpha)


def translucent_overlay(image: Image.Image, values: np.ndarray, max_alpha: float = 0.6
                        ) -> Image.Image:
    """The heat map over `image` with a per-pixel weight of `max_alpha * value`: cold
    regions leave the image untouched, the hottest are tinted at `max_alpha`.
    `values` (h,w) in [0,1] is upsampled bilinearly to the image's size.

    >>> img = Image.new("RGB", (4, 2), (200, 200, 200))
    >>> out = np.asarray(translucent_overlay(img, np.array([[0.0, 1.0]]), 0.5))
    >>> out[0, 0].tolist(), out[0, 3].tolist()  # cold: the image; hot: half dark red
    ([200, 200, 200], [164, 100, 100])
    """
    if not 0.0 <= max_alpha <= 1.0:
        raise ValueError(f"max_alpha must be in [0, 1], got {max_alpha}")
    base = image.convert("RGB")
    heat = np.clip(upsample(values, base.size), 0.0, 1.0)
    weight = (max_alpha * heat)[..., None]
    mixed = np.asarray(base, np.float32) * (1.0 - weight) + colorize(heat) * weight
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels (a long class name)."""
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "\u2026", font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "\u2026"


def legend_strip(width: int, caption: str, low: str = "low", high: str = "high"
                 ) -> Image.Image:
    """A white strip `width` pixels wide: `caption`, then `low` [colour scale] `high`."""
    size = max(11, min(28, width // 40))
    font = _font(size)
    pad = size // 2
    strip = Image.new("RGB", (width, 2 * size + 3 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text((pad, pad), _fit(draw, caption, font, width - 2 * pad), fill=(27, 31, 36),
              font=font)
    y = size + 2 * pad
    low_w = draw.textlength(low, font=font)
    high_w = draw.textlength(high, font=font)
    left, right = int(pad + low_w + pad), int(width - 2 * pad - high_w)
    draw.text((pad, y), low, fill=(27, 31, 36), font=font)
    draw.text((right + pad, y), high, fill=(27, 31, 36), font=font)
    if right - left >= 8:
        bar = colorize(np.linspace(0.0, 1.0, right - left)[None, :].repeat(size, axis=0))
        strip.paste(Image.fromarray(bar), (left, y))
    return strip


def with_legend(figure: Image.Image, caption: str, low: str = "low", high: str = "high"
                ) -> Image.Image:
    """`figure` (enlarged to MIN_FIGURE_WIDTH if narrower) above its colour legend."""
    figure = figure.convert("RGB")
    if figure.width < MIN_FIGURE_WIDTH:
        scale = MIN_FIGURE_WIDTH / figure.width
        figure = figure.resize((MIN_FIGURE_WIDTH, max(1, round(figure.height * scale))),
                               Image.Resampling.BICUBIC)
    legend = legend_strip(figure.width, caption, low, high)
    out = Image.new("RGB", (figure.width, figure.height + legend.height), (255, 255, 255))
    out.paste(figure, (0, 0))
    out.paste(legend, (0, figure.height))
    return out
