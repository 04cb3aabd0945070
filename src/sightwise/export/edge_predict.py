"""Classify images with this folder's model: needs only onnxruntime, numpy and Pillow.

    python predict.py IMAGE [IMAGE ...] [--top-k 3] [--json] [--threads N]

Written by `sightwise export --edge DIR` (it is copied as predict.py). The resize and
normalisation repeat sightwise.data.preprocess.resize_rgb / normalize step for step, the
RGB conversion repeats sightwise.data.decode.to_rgb, and softmax / top-k repeat
sightwise.core's, so this script answers what the Sightwise runtime and server answer.
It keeps its own copies because it must run with onnxruntime, numpy and Pillow alone;
sightwise's tests compare each copy with the library on edge cases (tests/export/test_edge.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
MAX_PIXELS = 40_000_000  # refuse decompression bombs, as sightwise does


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB, exactly as sightwise.data.decode.to_rgb: 16/32-bit integers
    scaled from the 16-bit range (a dim image stays dim), float images from [0, 1] (or
    from [0, 255] when they exceed 1), transparency composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
            top = 255.0
        else:
            top = 65535.0
        grey = np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        if img.size[0] * img.size[1] > MAX_PIXELS:
            raise ValueError(f"{img.size[0]}x{img.size[1]} pixels exceeds {MAX_PIXELS:,}")
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


def resize_rgb(img: Image.Image, pre: dict) -> np.ndarray:
    """RGB image -> uint8 (size, size, 3): "stretch", "center-crop" (short side) or
    "letterbox" (long side, the rest mirrored)."""
    s, resample = int(pre["size"]), RESAMPLE[pre["interpolation"]]
    if pre["resize"] == "letterbox":
        w, h = img.size
        scale = s / max(w, h)
        nw, nh = max(1, min(s, round(w * scale))), max(1, min(s, round(h * scale)))
        left, top = (s - nw) // 2, (s - nh) // 2
        inner = np.asarray(img.resize((nw, nh), resample), dtype=np.uint8)
        return np.pad(inner, ((top, s - nh - top), (left, s - nw - left), (0, 0)), mode="symmetric")
    if pre["resize"] == "center-crop":
        w, h = img.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), resample)
        left, top = (nw - s) // 2, (nh - s) // 2
        img = img.crop((left, top, left + s, top + s))
    else:
        img = img.resize((s, s), resample)
    return np.asarray(img, dtype=np.uint8)


def normalize(batch: np.ndarray, pre: dict) -> np.ndarray:
    """uint8 (N,H,W,3) -> float32 (N,3,H,W): /255, minus mean, over std."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax(logits / T) in float64, returned as float32 (as sightwise.core)."""
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    z = np.atleast_2d(np.asarray(logits, np.float64)) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """The k largest, largest first; ties keep the lower index first; k clamped to
    1..len(probs) (as sightwise.core)."""
    p = np.asarray(probs)
    k = max(1, min(int(k), p.shape[-1]))
    return np.argsort(-p, kind="stable")[:k]


def predict(paths: list[str], top_k: int = 3, threads: int | None = None) -> list[dict]:
    """[{"image", "error", "predictions": [{"label", "probability"}, ...]}] per path."""
    labels = json.loads((HERE / "labels.json").read_text(encoding="utf-8"))
    pre = json.loads((HERE / "preprocessing.json").read_text(encoding="utf-8"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or 0)
    session = ort.InferenceSession(str(HERE / pre["model"]), opts,
                                   providers=["CPUExecutionProvider"])
    out = []
    for path in paths:
        try:
            x = normalize(resize_rgb(load_image(path), pre)[None], pre)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            out.append({"image": path, "error": f"cannot read image ({exc})", "predictions": []})
            continue
        probs = softmax(session.run(["logits"], {"image": x})[0], pre["temperature"])[0]
        order = top_k_indices(probs, top_k)
        out.append({"image": path, "error": None, "predictions": [
            {"label": labels[i], "probability": float(probs[i])} for i in order]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Classify images with this folder's model.")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    results = predict(args.images, args.top_k, args.threads)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            tops = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in r["predictions"])
            print(f"{r['image']}: {'error: ' + r['error'] if r['error'] else tops}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
