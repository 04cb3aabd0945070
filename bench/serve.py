"""Claim: `sightwise serve` (ONNX Runtime + dynamic batching) answers concurrent clients
with >= 3x the throughput of a plain FastAPI endpoint running eager PyTorch per request, at
a lower p99 latency.

    python bench/serve.py BUNDLE [--seconds 20] [--concurrency 16]
    python bench/serve.py --decode-16bit [--megapixels 40]

Starts both servers on loopback in subprocesses: (a) ours through `serve_main` with its
default settings, (b) the reference written below: FastAPI + UploadFile, one eager PyTorch
forward pass per request (sightwise.models.io.load_classifier, inference mode,
channels_last, torch's default threads), the same decoding and preprocessing. The same
images (the bundle's own test split) are posted as multipart at the same concurrency to
each, in alternating rounds so a burst of load on a shared machine falls on both alike.
Prints requests/s and p50/p99 latency for both, the core count, and `ratio=<ours /
reference throughput>` last.

`--decode-16bit` measures the other claim of this file (#26 finding 10): converting a
16-bit PNG at the server's pixel limit to 8 bits, `sightwise.data.decode.to_rgb` against
the float64 formula it replaced (the reference, below), same process, same image: time,
numpy's peak allocation (tracemalloc), equal pixels, and `ratio=<reference / ours time>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, File, UploadFile  # module level: the route's annotations name them

ROUNDS = 4


def reference_app(bundle_path: str):
    """The reference: what a plain FastAPI endpoint over the PyTorch weights looks like."""
    import torch

    from sightwise.bundle import load_bundle
    from sightwise.data.decode import decode_image
    from sightwise.data.preprocess import normalize, resize_rgb
    from sightwise.models.io import load_classifier

    bundle = load_bundle(bundle_path)
    model, pre, classes = load_classifier(bundle), bundle.preprocessing, bundle.classes
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(file: list[UploadFile] = File(...)):  # noqa: B008 - FastAPI's idiom
        results = []
        for upload in file:
            t0 = time.perf_counter()
            x = torch.from_numpy(normalize(resize_rgb(decode_image(upload.file.read()), pre)[None],
                                           pre))
            with torch.inference_mode():
                logits = model(x.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits[0] / bundle.temperature, dim=0)
            top = torch.argsort(probs, descending=True)[:5].tolist()
            results.append({"predictions": [{"label": classes[i], "probability": float(probs[i])}
                                            for i in top],
                            "ms": (time.perf_counter() - t0) * 1000})
        return {"model": {"name": "reference", "version": 0}, "results": results}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, bundle: str, serve_kwargs: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "ours":
        kwargs = {"bundle": bundle, "port": port, "log_level": "warning", **serve_kwargs}
        code = f"from sightwise.serve.runner import serve_main; serve_main(**{kwargs!r})"
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, __file__, "--reference-server", bundle, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/docs" if kind != "ours" else url + "/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """One pre-encoded body, so the client spends no time encoding during the run."""
    boundary = "sightwisebench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def load(url: str, bodies: list[tuple[bytes, str]], seconds: float,
               concurrency: int) -> tuple[int, list[float], int]:
    """(answered, latencies of 200s, errors) from `concurrency` back-to-back clients."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        stop_at = time.monotonic() + seconds

        async def worker(k: int):
            nonlocal errors
            i = k
            while time.monotonic() < stop_at:
                body, ctype = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", content=body,
                                      headers={"content-type": ctype})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return len(latencies), latencies, errors


def images(bundle_path: str, n: int = 32) -> list[tuple[str, bytes]]:
    from sightwise.bundle import load_bundle
    from sightwise.export.manifest import bundle_samples

    bundle = load_bundle(bundle_path)
    samples = []
    for split in ("test", "val", "train"):
        samples += bundle_samples(bundle, split)
    return [(Path(s.source).name, Path(s.source).read_bytes()) for s in samples[:n]]


def old_to_rgb_16bit(img):
    """The reference: the 16-bit conversion as it was before #26 (float64 of the image)."""
    from PIL import Image

    arr = np.asarray(img)
    u8 = np.clip(arr.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(u8, "L").convert("RGB")


def decode_16bit(megapixels: float) -> int:
    import io
    import tracemalloc

    from PIL import Image

    from sightwise.data.decode import to_rgb

    h = int((megapixels * 1e6 / 1.6) ** 0.5)
    w = int(megapixels * 1e6 / h)
    ramp = (np.add.outer(np.arange(h, dtype=np.uint32) * 7, np.arange(w, dtype=np.uint32))
            % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    del ramp
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.load()
    print(f"{w}x{h} 16-bit PNG ({w * h / 1e6:.1f} MP, {len(buf.getvalue()):,} bytes), "
          f"{os.cpu_count()} cores", flush=True)
    rows, outs = {}, {}
    for _ in range(3):  # alternating rounds, best time of each
        for name, fn in (("ours", to_rgb), ("reference", old_to_rgb_16bit)):
            tracemalloc.start()
            t0 = time.perf_counter()
            outs[name] = fn(img)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            best = rows.get(name, (float("inf"), 0))
            rows[name] = (min(best[0], dt), max(best[1], peak))
    same = np.array_equal(np.asarray(outs["ours"]), np.asarray(outs["reference"]))
    for name, (dt, peak) in rows.items():
        print(f"{name:10s} {dt:6.2f} s   numpy peak {peak / 2**20:7.0f} MiB", flush=True)
    print(f"same pixels: {same}")
    print(f"cores={os.cpu_count()}")
    print(f"ratio={rows['reference'][0] / rows['ours'][0]:.2f}")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--decode-16bit", action="store_true",
                    help="time the 16-bit conversion at the pixel limit instead")
    ap.add_argument("--megapixels", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="load time per server")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--serve-kwargs", default="{}",
                    help="JSON of extra serve_main arguments for our server, e.g. "
                         '\'{"threads": 1, "max_batch": 32}\' (default: its defaults)')
    ap.add_argument("--reference-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decode_16bit:
        return decode_16bit(args.megapixels)
    if args.bundle is None:
        ap.error("give a BUNDLE (or --decode-16bit)")
    if args.reference_server:
        import uvicorn

        uvicorn.run(reference_app(args.bundle), host="127.0.0.1", port=args.port,
                    log_level="warning")
        return 0
    return throughput(args)


def throughput(args) -> int:
    """Load both servers in alternating rounds; print the table and `ratio=` last."""
    cores = os.cpu_count() or 1
    bodies = [multipart(n, d) for n, d in images(args.bundle)]
    print(f"bundle {args.bundle}, {len(bodies)} images, concurrency {args.concurrency}, "
          f"{ROUNDS} alternating rounds, {args.seconds:g} s per server, {cores} cores", flush=True)
    serve_kwargs = json.loads(args.serve_kwargs)
    if serve_kwargs:
        print(f"our server: serve_main(**{serve_kwargs})", flush=True)
    servers = {kind: start(kind, args.bundle, serve_kwargs) for kind in ("ours", "reference")}
    stats = {kind: {"n": 0, "lat": [], "errors": 0, "time": 0.0} for kind in servers}
    try:
        for _, url in servers.values():  # warm-up: threads, allocations, oneDNN
            asyncio.run(load(url, bodies, 2.0, args.concurrency))
        for _ in range(ROUNDS):
            for kind, (_, url) in servers.items():
                t0 = time.perf_counter()
                n, lat, err = asyncio.run(load(url, bodies, args.seconds / ROUNDS,
                                               args.concurrency))
                s = stats[kind]
                s["time"] += time.perf_counter() - t0
                s["n"] += n
                s["lat"] += lat
                s["errors"] += err
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = {}
    for kind, s in stats.items():
        ms = np.asarray(s["lat"]) * 1000
        rows[kind] = {"rps": s["n"] / s["time"], "p50": float(np.percentile(ms, 50)),
                      "p99": float(np.percentile(ms, 99)), "errors": s["errors"], "n": s["n"]}
        r = rows[kind]
        print(f"{kind:10s} {r['rps']:7.1f} requests/s   p50 {r['p50']:7.1f} ms   "
              f"p99 {r['p99']:7.1f} ms   ({r['n']} answered, {r['errors']} errors)", flush=True)
    ours, ref = rows["ours"], rows["reference"]
    print(json.dumps({"ours": ours, "reference": ref}))
    print(f"p99 ours/reference: {ours['p99'] / ref['p99']:.2f}")
    print(f"cores={cores}")
    print(f"ratio={ours['rps'] / ref['rps']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
