"""Claims (issue #18): the drift monitor's clean-stream alert rate stays at or under 2 x alpha
(Wilson 95 % upper bound), it detects corruptions of severity >= 3 at W=100 and foreign
images at W=50 with probability >= 0.9, its label-free accuracy is within 0.05 of the true
accuracy on NEU at severities 1-3, and the prediction log costs < 10 % of throughput.

Streams come from each bundle's TEST split only (the reference is its validation split).
For speed, each test image goes through the bundle's ONNX graph (sightwise.runtime.Predictor)
once per corruption x severity; windows are then drawn from those rows (without replacement
inside a window) and tested with the product's own WindowTester and alert rule.
Corruptions are applied at the model's input size (after the bundle's resize).

Reference for the log's cost: the same Predictor loop without the log, interleaved in the
same run (the server's wiring comes later; this is PredictionLog.append + its writer).

Usage: python bench/drift.py --neu BUNDLE --breast BUNDLE [--trials 20] [--clean 400]
(about 30-40 min on 2 busy cores; outputs are cached in /tmp/sightwise-drift-cache)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: BLAS threads only contend
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from scipy import ndimage  # noqa: E402

from sightwise.bundle import load_bundle  # noqa: E402
from sightwise.export.manifest import bundle_samples, load_images  # noqa: E402
from sightwise.monitor.reference import REFERENCE, build_reference, load_reference, run_outputs  # noqa: E402
from sightwise.monitor.stats import wilson_interval  # noqa: E402
from sightwise.monitor.windows import MonitorConfig, WindowTester  # noqa: E402
from sightwise.runtime import Predictor  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CACHE = Path(tempfile.gettempdir()) / "sightwise-drift-cache"
SIZES = (50, 100, 200)
SEVERITIES = (1, 2, 3, 4, 5)


# -- corruptions (our own parameters, in the spirit of Hendrycks & Dietterich's ImageNet-C) --

def _noise(a, s, rng):
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[s - 1] * 255
    return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255)


def _blur(a, s, rng):
    r = (0.5, 1.0, 1.5, 2.5, 4.0)[s - 1] * a.shape[0] / 224
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(r)))


def _brightness(a, s, rng):
    return np.clip(a.astype(np.float64) + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1] * 255, 0, 255)


def _contrast(a, s, rng):
    c = (0.6, 0.45, 0.3, 0.2, 0.1)[s - 1]
    m = a.mean()
    return np.clip((a - m) * c + m, 0, 255)


def _jpeg(a, s, rng):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=(40, 25, 15, 10, 5)[s - 1])
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _defocus(a, s, rng):
    r = max(1, round((1, 2, 3, 4, 6)[s - 1] * a.shape[0] / 224))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2 <= r * r).astype(np.float64)
    disk /= disk.sum()
    return np.stack([ndimage.convolve(a[..., c].astype(np.float64), disk, mode="reflect")
                     for c in range(3)], -1)


CORRUPTIONS = {"gaussian_noise": _noise, "blur": _blur, "brightness": _brightness,
               "contrast": _contrast, "jpeg": _jpeg, "defocus": _defocus}


# -- model outputs, once per image and condition ------------------------------------------------

def rows_for(pred: Predictor, ref, images: np.ndarray, labels: np.ndarray) -> dict:
    """Probabilities, PCA coordinates, fold-model outlier scores and correctness per image."""
    probs, emb = run_outputs(pred, images)
    keys = [hashlib.sha256(a.tobytes()).hexdigest() for a in images]
    return {"probs": probs, "proj": ref.project(emb), "d2": ref.outlier_scores(emb, keys),
            "correct": probs.argmax(1) == labels, "labels": labels}


def all_rows(bundle_path: Path, pred: Predictor, ref) -> dict:
    """{condition: rows} for clean and every corruption x severity (cached on disk)."""
    b = pred.bundle
    key = b.meta["files"][REFERENCE]["sha256"][:12] + b.meta["files"]["model.onnx"]["sha256"][:12]
    cache = CACHE / f"{bundle_path.parent.name}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            out: dict = {}
            for name in z.files:
                cond, field = name.split("|")
                out.setdefault(cond, {})[field] = z[name]
            return out
    images, labels = load_images(bundle_samples(b, "test"), b.preprocessing, print, what="test")
    out = {"clean": rows_for(pred, ref, images, labels)}
    rng = np.random.default_rng(0)
    for name, fn in CORRUPTIONS.items():
        for s in SEVERITIES:
            t0 = time.perf_counter()
            bad = np.stack([fn(a, s, rng) for a in images]).round().astype(np.uint8)
            out[f"{name}-{s}"] = rows_for(pred, ref, bad, labels)
            acc = out[f"{name}-{s}"]["correct"].mean()
            print(f"  {bundle_path.parent.name} {name}-{s}: accuracy {acc:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{c}|{f}": v for c, rows in out.items() for f, v in rows.items()})
    return out


def foreign_rows(pred: Predictor, ref, n: int = 300) -> dict:
    """Magnetic tile images (every class) through the NEU model: images it was never meant for."""
    from sightwise.data.decode import decode_image
    from sightwise.data.preprocess import resize_rgb

    files = sorted((SHARED / "magnetic_tile" / "images").glob("*/*.jpg"))
    pick = np.random.default_rng(1).choice(len(files), min(n, len(files)), replace=False)
    images = np.stack([resize_rgb(decode_image(files[i]), pred.preprocessing) for i in sorted(pick)])
    return rows_for(pred, ref, images, np.full(len(images), -1))


# -- windows -----------------------------------------------------------------------------------

def window(rows: dict, idx: np.ndarray) -> tuple:
    return rows["probs"][idx], rows["proj"][idx], rows["d2"][idx]


def draw(n_pool: int, w: int, rng) -> np.ndarray | None:
    return None if w > n_pool else rng.choice(n_pool, w, replace=False)


def clean_rate(tester: WindowTester, rows: dict, w: int, n: int, seed: int) -> dict | None:
    """Per-window drift flags and alert onsets over n consecutive clean windows."""
    rng = np.random.default_rng(seed)
    if w > len(rows["probs"]):
        return None
    drift = [tester.test(*window(rows, draw(len(rows["probs"]), w, rng)), seed=seed + i)["drift"]
             for i in range(n)]
    onsets, before = 0, False
    for i in range(n):
        alert = sum(drift[max(0, i - 2):i + 1]) >= 2
        onsets += alert and not before
        before = alert
    return {"windows": n, "drift": int(sum(drift)), "drift_ci": wilson_interval(sum(drift), n),
            "alerts": onsets, "alert_ci": wilson_interval(onsets, n)}


def shift_trials(tester, clean: dict, shifted_draw, w: int, trials: int, seed: int,
                 max_shifted: int = 4) -> dict:
    """Each trial: 2 clean windows, then shifted windows until an alert (2 of the last 3
    windows drifted) or max_shifted. Detection = an alert within 3 shifted windows."""
    rng = np.random.default_rng(seed)
    detected, delays, flags, acc_pairs = 0, [], [], []
    for t in range(trials):
        drifts = [tester.test(*window(clean, draw(len(clean["probs"]), w, rng)),
                              seed=seed + 97 * t + i)["drift"] for i in range(2)]
        for k in range(1, max_shifted + 1):
            rows, idx = shifted_draw(rng)
            res = tester.test(*window(rows, idx), seed=seed + 97 * t + 10 + k)
            drifts.append(res["drift"])
            flags.append(res["drift"])
            if rows["labels"][0] >= 0:
                true = float(rows["correct"][idx].mean())
                acc_pairs.append((true, res["accuracy"]["atc"]["estimate"],
                                  res["accuracy"]["confidence"]["estimate"]))
            if sum(drifts[-3:]) >= 2:
                detected += k <= 3
                delays.append(k * w)
                break
    return {"trials": trials, "detected": detected,
            "detection_ci": wilson_interval(detected, trials),
            "window_power": float(np.mean(flags)), "median_delay": (
                float(np.median(delays)) if delays else None), "acc": acc_pairs}


def prior_draw(clean: dict, w: int, cls: int):
    """Windows with class `cls` at 3x its test share (others in proportion); None when the
    class has too few test images for a window without repeats."""
    labels = clean["labels"]
    share = np.mean(labels == cls)
    new = 3 * share / (3 * share + (1 - share))
    n_cls = round(new * w)
    pool_c, pool_o = np.flatnonzero(labels == cls), np.flatnonzero(labels != cls)
    if n_cls > len(pool_c) or w - n_cls > len(pool_o):
        return None

    def f(rng):
        idx = np.concatenate([rng.choice(pool_c, n_cls, replace=False),
                              rng.choice(pool_o, w - n_cls, replace=False)])
        return clean, idx
    return f


# -- the log's write cost ----------------------------------------------------------------------

def log_cost(pred: Predictor, images: np.ndarray, rounds: int = 12) -> dict:
    """Images/s of a Predictor loop (batches of 8) with MonitorLog.observe vs without, in
    back-to-back pairs (order alternating) so machine load hits both alike; the ratio is the
    median of the pairs' ratios. Plus observe's own cost per record."""
    from sightwise.monitor.live import MonitorLog

    rates = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as d, MonitorLog(d, live=True) as mlog:
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                t0 = time.perf_counter()
                for i in range(0, len(images), 8):
                    probs, emb = run_outputs(pred, images[i:i + 8])
                    if mode == "on":
                        shas = [hashlib.sha256(a.tobytes()).hexdigest() for a in images[i:i + 8]]
                        mlog.observe(bundle=pred.bundle, model="bench", version=1, probs=probs,
                                     embeddings=emb, sha256s=shas, latencies_ms=[1.0] * len(shas))
                rates[mode].append(len(images) / (time.perf_counter() - t0))
        mlog.log.flush()
        status = mlog.log.status()
        probs, emb = run_outputs(pred, images[:8])
        recs = 2000
        t0 = time.perf_counter()
        for i in range(recs // 8):
            mlog.observe(bundle=pred.bundle, model="bench", version=1, probs=probs,
                         embeddings=emb, sha256s=[f"{i:056x}{j:08x}" for j in range(8)])
        per_record_us = (time.perf_counter() - t0) / recs * 1e6
        mlog.log.flush()
    off, on = float(np.median(rates["off"])), float(np.median(rates["on"]))
    pairs = np.array(rates["on"]) / np.array(rates["off"])
    return {"off_img_s": off, "on_img_s": on, "ratio": float(np.median(pairs)),
            "pair_ratios": pairs.round(3).tolist(), "dropped": status["dropped"],
            "written": status["written"], "observe_us_per_record": per_record_us}


# -- one bundle --------------------------------------------------------------------------------

def run_bundle(path: Path, args, *, foreign: bool) -> dict:
    bundle = load_bundle(path)
    if REFERENCE not in bundle.meta.get("files", {}):
        build_reference(path, threads=args.threads)
        bundle = load_bundle(path)
    ref = load_reference(bundle)
    pred = Predictor(bundle, threads=args.threads)
    name = path.parent.name if path.name == "bundle" else path.name
    t0 = time.perf_counter()
    rows = all_rows(path, pred, ref)
    print(f"{name}: outputs ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict = {"name": name, "n_test": int(len(rows["clean"]["probs"])),
                 "n_reference": ref.stats["n"], "test_accuracy": float(rows["clean"]["correct"].mean()),
                 "clean": {}, "power": {}, "prior": {}, "foreign": {}}
    cfg = MonitorConfig()
    tester = {w: WindowTester(ref, MonitorConfig(window=w, min_n=min(20, w))) for w in SIZES}
    for w in SIZES:
        out["clean"][w] = clean_rate(tester[w], rows["clean"], w, args.clean, seed=w)
        print(f"{name} clean W={w}: {out['clean'][w]}", flush=True)
    clean = rows["clean"]
    for cond in [c for c in rows if c != "clean"]:
        for w in SIZES:
            if w > len(clean["probs"]):
                continue
            bad = rows[cond]
            res = shift_trials(tester[w], clean, lambda rng, b=bad, w=w: (b, draw(len(b["probs"]), w, rng)),
                               w, args.trials, seed=hash_seed(cond, w))
            out["power"][f"{cond}|{w}"] = res
        print(f"{name} {cond}: " + ", ".join(
            f"W={w} {out['power'][f'{cond}|{w}']['detected']}/{args.trials}" for w in SIZES
            if f"{cond}|{w}" in out["power"]), flush=True)
    cls = int(np.argmin(np.bincount(clean["labels"])))
    for w in SIZES:
        f = prior_draw(clean, w, cls)
        out["prior"][w] = None if f is None else shift_trials(tester[w], clean, f, w, args.trials,
                                                               seed=hash_seed("prior", w))
    out["prior_class"] = bundle.classes[cls]
    print(f"{name} prior shift ({bundle.classes[cls]} x3): " + ", ".join(
        f"W={w} {r['detected']}/{r['trials']}" if r else f"W={w} n/a" for w, r in out["prior"].items()))
    if foreign:
        frows = foreign_rows(pred, ref)
        for w in SIZES:
            out["foreign"][w] = shift_trials(
                tester[w], clean, lambda rng, w=w: (frows, draw(len(frows["probs"]), w, rng)),
                w, args.trials, seed=hash_seed("foreign", w))
        print(f"{name} foreign: " + ", ".join(f"W={w} {r['detected']}/{r['trials']}"
                                              for w, r in out["foreign"].items()), flush=True)
    out["example"] = example_stream(ref, rows, cfg)
    return out


def hash_seed(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def example_stream(ref, rows: dict, cfg: MonitorConfig) -> dict:
    """The product's own report on a stream: 8 clean windows, then Gaussian noise rising
    from severity 1 to 5 (2 windows each), through records and analyse()."""
    from sightwise.monitor.live import make_records
    from sightwise.monitor.windows import analyse

    rng = np.random.default_rng(5)
    plan = ["clean"] * 8 + [f"gaussian_noise-{s}" for s in SEVERITIES for _ in range(2)]
    recs, t = [], 1.7e9
    for cond in plan:
        r = rows[cond]
        idx = draw(len(r["probs"]), cfg.window, rng)
        for i in idx:
            rec = make_records(model="bench", version=1, probs=r["probs"][i:i + 1],
                               sha256s=[f"{hash_seed(cond, int(i), t):064x}"], t=t)[0]
            rec.update(proj=r["proj"][i].tolist(), d2=float(r["d2"][i]), ref=ref.meta["id"])
            recs.append(rec)
            t += 3.0
    windows = analyse(recs, ref, cfg)
    return {"windows": [{k: v for k, v in w.items() if k != "sha256"} for w in windows],
            "alerts": sum(w["alert_start"] for w in windows), "config": {"alpha": cfg.alpha},
            "reference_accuracy": ref.stats["accuracy"],
            "true_accuracy": [float(rows[c]["correct"].mean()) for c in plan]}


# -- summaries and figures ---------------------------------------------------------------------

def accuracy_mae(res: dict) -> dict:
    """MAE of each label-free estimate against the true accuracy over corrupted windows
    (W=100), for severities 1-3, 4-5 and all."""
    out = {}
    for group, sev in (("1-3", (1, 2, 3)), ("4-5", (4, 5)), ("all", SEVERITIES)):
        pairs = [p for key, r in res["power"].items() for p in r["acc"]
                 if key.endswith("|100") and int(key.split("|")[0].rsplit("-", 1)[1]) in sev]
        if pairs:
            a = np.array(pairs)
            out[group] = {"windows": len(a), "atc": float(np.mean(np.abs(a[:, 1] - a[:, 0]))),
                          "confidence": float(np.mean(np.abs(a[:, 2] - a[:, 0])))}
    return out


def detection_by_severity(res: dict, w: int) -> dict:
    table = {}
    for key, r in res["power"].items():
        cond, size = key.split("|")
        if int(size) == w:
            name, s = cond.rsplit("-", 1)
            table.setdefault(name, {})[int(s)] = r["detected"] / r["trials"]
    return table


def figures(results: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from sightwise.core import atomic_write_bytes
    from sightwise.monitor.report import drift_plot_png

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = Figure(figsize=(10, 4.2), dpi=110)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, res in zip(axes, results, strict=True):
        pairs = np.array([p for k, r in res["power"].items() for p in r["acc"] if k.endswith("|100")])
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
        ax.scatter(pairs[:, 0], pairs[:, 1], s=6, alpha=0.35, label="ATC", color="C2")
        ax.scatter(pairs[:, 0], pairs[:, 2], s=6, alpha=0.35, label="confidence", color="C1")
        ax.set(xlabel="true accuracy of the window", ylabel="estimated accuracy",
               title=f"{res['name']}: corrupted windows, W=100", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "drift_accuracy.png", atomic_write_bytes))
    fig = Figure(figsize=(10, 4.2), dpi=110)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, res in zip(axes, results, strict=True):
        for i, (name, by_s) in enumerate(sorted(detection_by_severity(res, 100).items())):
            ax.plot(list(by_s), list(by_s.values()), "o-", ms=4, color=f"C{i}", label=name)
        ax.axhline(0.9, color="grey", ls="--", lw=1)
        ax.set(xlabel="severity", ylabel="alert within 3 windows", ylim=(-0.03, 1.03),
               title=f"{res['name']}: detection at W=100", xticks=list(SEVERITIES))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "drift_detection.png", atomic_write_bytes))
    png = drift_plot_png(results[0]["example"])
    paths.append(atomic_write_bytes(out_dir / "drift_report_example.png", png))
    return paths


def _save(fig, path: Path, write) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neu", type=Path, required=True, help="exported NEU bundle")
    ap.add_argument("--breast", type=Path, required=True, help="exported BreastMNIST bundle")
    ap.add_argument("--trials", type=int, default=20, help="trials per shift x severity x W")
    ap.add_argument("--clean", type=int, default=400, help="clean windows per window size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--log-only", action="store_true", help="only the log's write cost")
    ap.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "drift_bench.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.log_only:
        results = []
    else:
        results = [run_bundle(args.neu, args, foreign=True),
                   run_bundle(args.breast, args, foreign=False)]
    for res in results:
        res["accuracy_mae"] = accuracy_mae(res)
        res["detection_w100"] = detection_by_severity(res, 100)
        print(f"{res['name']} label-free accuracy MAE: {json.dumps(res['accuracy_mae'])}")
    pred = Predictor(load_bundle(args.neu), threads=args.threads)
    images, _ = load_images(bundle_samples(pred.bundle, "test")[:160], pred.preprocessing, print,
                            what="test")
    cost = log_cost(pred, images)
    paths = figures(results, args.figures) if results else []
    args.json.write_text(json.dumps({"bundles": [{k: v for k, v in r.items() if k != "example"}
                                                 for r in results], "log": cost}, default=str))
    print(f"wrote {', '.join(map(str, [*paths, args.json]))}; {time.perf_counter() - t0:.0f} s")
    print(f"log: {cost['on_img_s']:.1f} img/s with the log vs {cost['off_img_s']:.1f} without "
          f"(medians; pair ratios {cost['pair_ratios']}); observe "
          f"{cost['observe_us_per_record']:.0f} us/record; dropped {cost['dropped']}")
    print(f"ratio={cost['ratio']:.3f} (throughput with the prediction log / without, "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
