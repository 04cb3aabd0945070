"""Claim: ONNX Runtime serves a bundle faster than eager PyTorch, and int8 faster still.

    python bench/runtime.py BUNDLE [--seconds 8]

Times, on the same decoded images in one process: latency p50/p95 at batch 1 and throughput
at batch 32, for eager PyTorch (sightwise.models.io.load_classifier, inference mode,
channels_last), ONNX Runtime fp32 and ONNX Runtime int8. Both frameworks get one intra-op
thread per core. Exports the bundle first (fp32 + int8) when its graphs are missing. The
last line is `ratio=<ONNX fp32 / eager throughput at batch 32>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sightwise.bundle import load_bundle
from sightwise.core import make_session
from sightwise.data.preprocess import normalize
from sightwise.errors import SightwiseError
from sightwise.export.api import export_bundle
from sightwise.export.manifest import bundle_samples, load_images
from sightwise.models.io import load_classifier
from sightwise.train.augment import to_input


def ensure_exported(path: Path) -> None:
    bundle = load_bundle(path)
    if {"model.onnx", "model.int8.onnx"} <= set(bundle.meta.raw["files"]):
        return
    print("exporting (fp32 + int8) first ...", flush=True)
    try:
        export_bundle(path, int8=True, log=lambda m: print("  " + m, flush=True))
    except SightwiseError as exc:  # a failed gate still leaves graphs to time
        print(f"  note: {exc}", flush=True)


def bench_images(bundle, n: int = 64) -> np.ndarray:
    """Up to n uint8 images of the bundle's own data (test split first), tiled to >= 32."""
    samples = []
    for split in ("test", "val", "train"):
        samples += bundle_samples(bundle, split)
    images, _ = load_images(samples[:n], bundle.preprocessing, print, what="benchmark")
    reps = int(np.ceil(32 / len(images)))
    return np.concatenate([images] * reps) if reps > 1 else images


def interleaved(engines: dict[str, Callable[[np.ndarray], object]], images: np.ndarray,
                seconds: float, rounds: int = 6) -> dict[str, dict]:
    """Batch-1 latencies and batch-32 times per engine, measured in alternating rounds so a
    burst of load on a shared machine falls on every engine alike, not on one."""
    one = [images[i:i + 1] for i in range(len(images))]
    batch = images[:32]
    for run in engines.values():  # warm-up: allocations, oneDNN primitives, thread pools
        run(one[0])
        run(batch)
    lat = {name: [] for name in engines}
    big = {name: [] for name in engines}
    for _ in range(rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds / 2 or not lat[name]:
                t0 = time.perf_counter()
                run(one[len(lat[name]) % len(one)])
                lat[name].append(time.perf_counter() - t0)
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds / 2 or not big[name]:
                t0 = time.perf_counter()
                run(batch)
                big[name].append(time.perf_counter() - t0)
    rows = {}
    for name in engines:
        ms = np.asarray(lat[name]) * 1e3
        rows[name] = {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                      "throughput": 32 / float(np.median(big[name])),
                      "calls": (len(ms), len(big[name]))}
        r = rows[name]
        print(f"{name:14s} batch 1: p50 {r['p50']:7.2f} ms  p95 {r['p95']:7.2f} ms "
              f"({r['calls'][0]} calls)   batch 32: {r['throughput']:7.1f} img/s "
              f"({r['calls'][1]} calls)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="time per engine (half batch 1, half batch 32), spread over 6 rounds")
    args = ap.parse_args(argv)
    path = Path(args.bundle)
    ensure_exported(path)
    bundle = load_bundle(path)
    pre, cores = bundle.preprocessing, os.cpu_count() or 1
    torch.set_num_threads(cores)
    images = bench_images(bundle)
    print(f"bundle {path} ({bundle.meta.raw['model']['name']}, {pre.size} px), {len(images)} images, "
          f"{cores} cores, torch {torch.__version__} threads={torch.get_num_threads()}", flush=True)

    model = load_classifier(bundle)

    def eager(u8: np.ndarray):
        with torch.inference_mode():
            return model(to_input(torch.from_numpy(u8), pre))

    def onnx_runner(name: str):
        session = make_session(bundle.file(name), cores)
        return lambda u8: session.run(["logits"], {"image": normalize(u8, pre)})

    engines = {"eager PyTorch": eager, "ONNX fp32": onnx_runner("model.onnx"),
               "ONNX int8": onnx_runner("model.int8.onnx")}
    rows = [{"name": k, **v} for k, v in interleaved(engines, images, args.seconds).items()]
    sizes = {f: (bundle.path / f).stat().st_size / 2**20
             for f in ("weights.safetensors", "model.onnx", "model.int8.onnx")}
    print("sizes: " + ", ".join(f"{f} {mb:.1f} MiB" for f, mb in sizes.items())
          + f"; fp32/int8 {sizes['model.onnx'] / sizes['model.int8.onnx']:.2f}x")
    eager_row = rows[0]
    for r in rows[1:]:
        print(f"{r['name']} vs eager: batch-32 throughput {r['throughput'] / eager_row['throughput']:.2f}x,"
              f" batch-1 p50 latency {eager_row['p50'] / r['p50']:.2f}x faster")
    print(f"int8 vs fp32: batch-32 throughput {rows[2]['throughput'] / rows[1]['throughput']:.2f}x")
    print(f"cores={cores}")
    print(f"ratio={rows[1]['throughput'] / eager_row['throughput']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
