"""Claim: `sightwise predict FOLDER --out` predicts a folder many times faster than calling
`sightwise predict` once per file, with memory that does not grow with the number of files.

    python bench/batch_predict.py [--bundle /tmp/scale/neu/bundle] [--n 2000]
        [--per-file 30] [--memory-bundle /tmp/scale/neu64/bundle] [--big 20000] [--ray]

On `n` images (hard links to the NEU images under /tmp, cycled to reach n: same bytes,
their own names), each in its own run of the same command line a user types:
- ours: `sightwise predict BUNDLE FOLDER --out preds.csv` (start-up included);
- per file: `sightwise predict BUNDLE FILE`, a process per image, on `per-file` images;
- Python: `Predictor.predict_paths([path])` one image at a time (no process start-up);
- with --ray: `--engine ray` on the same folder (a local Ray started by the command).
Then peak RSS of `predict FOLDER --out` at `n` and at `big` files (with `--memory-bundle`,
a 64 px bundle, so 20,000 files take minutes, not an hour). Every timing is one run on a
machine that may be shared: the numbers say what one run did. The last line is
`ratio=<ours / per-file images per second>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
NEU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu_det" / "images"
RSS_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def linked_folder(root: Path, n: int) -> Path:
    """root/n<n>/<class>/<i>_<name>.jpg: hard links to the NEU images, cycled to n files."""
    folder = root / f"n{n}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    sources = sorted(NEU.rglob("*.jpg"))
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / src.parent.name / f"{i:06d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sightwise.cli", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "SIGHTWISE_TRACKING": "0"}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def folder_rate(bundle: str, folder: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(images/s, seconds) of one `predict FOLDER --out` run, start-up included."""
    out.unlink(missing_ok=True)
    seconds = timed(cli("predict", bundle, str(folder), "-r", "--out", str(out),
                        "--no-progress", *extra))
    n = sum(1 for _ in open(out)) - 1 if out.suffix == ".csv" else _parquet_rows(out)
    return n / seconds, seconds


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def per_file_rate(bundle: str, files: list[Path]) -> float:
    t0 = time.perf_counter()
    for f in files:
        subprocess.run(cli("predict", bundle, str(f)), env=env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return len(files) / (time.perf_counter() - t0)


def python_rate(bundle: str, files: list[Path]) -> float:
    sys.path.insert(0, str(SRC))
    from sightwise.runtime import Predictor

    predictor = Predictor(bundle)
    t0 = time.perf_counter()
    for f in files:
        predictor.predict_paths([f])
    return len(files) / (time.perf_counter() - t0)


def peak_rss_mib(bundle: str, folder: Path, out: Path) -> float:
    """Peak resident memory of one `predict FOLDER --out` process (its own rusage)."""
    out.unlink(missing_ok=True)
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cli("predict", bundle, str(folder),
                          "-r", "--out", str(out), "--no-progress")], env=env(),
                         capture_output=True, text=True, check=True)
    kib, rc = res.stdout.split()
    if rc != "0":
        raise SystemExit(f"predict failed: {res.stderr[-500:]}")
    return int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="/tmp/scale/neu/bundle")
    ap.add_argument("--memory-bundle", default="/tmp/scale/neu64/bundle")
    ap.add_argument("--root", default="/tmp/scale/bench")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=20000)
    ap.add_argument("--per-file", type=int, default=30)
    ap.add_argument("--ray", action="store_true")
    a = ap.parse_args()
    root = Path(a.root)
    print(f"cores={os.cpu_count()} load={os.getloadavg()[0]:.1f} n={a.n} bundle={a.bundle}",
          flush=True)
    folder = linked_folder(root, a.n)
    files = sorted(folder.rglob("*.jpg"))
    ours, seconds = folder_rate(a.bundle, folder, root / "preds.csv")
    print(f"ours: predict FOLDER --out: {ours:.1f} images/s ({a.n} in {seconds:.1f} s, "
          "start-up included)", flush=True)
    sub = files[:: max(1, len(files) // a.per_file)][:a.per_file]
    per_file = per_file_rate(a.bundle, sub)
    print(f"per file: sightwise predict FILE x {len(sub)}: {per_file:.2f} images/s", flush=True)
    py = python_rate(a.bundle, files)
    print(f"python: Predictor.predict_paths one image at a time: {py:.1f} images/s", flush=True)
    result = {"ours": ours, "per_file": per_file, "python_one_at_a_time": py}
    if a.ray:
        rate, secs = folder_rate(a.bundle, folder, root / "preds_ray.parquet", "--engine", "ray")
        print(f"ray: predict FOLDER --out --engine ray (local Ray, {os.cpu_count()} CPUs): "
              f"{rate:.1f} images/s ({secs:.1f} s; local engine {seconds:.1f} s, "
              f"{secs / seconds:.2f}x the time)", flush=True)
        result["ray"] = rate
    small = peak_rss_mib(a.memory_bundle, folder, root / "mem_small.csv")
    big = peak_rss_mib(a.memory_bundle, linked_folder(root, a.big), root / "mem_big.csv")
    print(f"peak RSS (64 px bundle): {a.n} files {small:.0f} MiB, {a.big} files {big:.0f} MiB "
          f"({big / small:.2f}x)", flush=True)
    result.update(rss_small_mib=small, rss_big_mib=big)
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))
    print(f"cores={os.cpu_count()} ratio={ours / per_file:.1f}")


if __name__ == "__main__":
    main()
