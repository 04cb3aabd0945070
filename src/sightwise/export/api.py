"""`export_bundle`: add ONNX graphs, the CAM head and a parity record to a bundle.

Adds `model.onnx` (fp32), `head.npz` (the linear head, for torch-free CAM), `parity.json`
and, with int8=True, `model.int8.onnx`; then rewrites bundle.json with every file's sha256
and an "export" entry. Everything is built in a hidden staging folder inside the bundle and
renamed into place just before bundle.json is rewritten, so a failed export leaves the
bundle as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from sightwise.bundle import Bundle, atomic_write_json, load_bundle, write_bundle_meta
from sightwise.core import make_session
from sightwise.data.preprocess import Preprocessing, normalize
from sightwise.errors import BundleError
from sightwise.export.edge import check_edge_target, write_edge_package
from sightwise.export.manifest import bundle_samples, load_images, unchanged
from sightwise.export.onnx_export import export_onnx, run_logits, save_head
from sightwise.export.parity import GATE, Gate, ParityError, failure_message, parity_report
from sightwise.export.quantize import (
    DEFAULT_CALIB_SIZE,
    QUANTIZATION_METHOD,
    calibration_images,
    quantize_int8,
)
from sightwise.models.io import load_classifier
from sightwise.train.augment import to_input

FP32, INT8, HEAD, PARITY = "model.onnx", "model.int8.onnx", "head.npz", "parity.json"


def train_and_export(cfg, log=print) -> dict:
    """`sightwise train`: train, evaluate and bundle (`run_training`), then export the fp32
    ONNX graph with its parity check, so every bundle predicts, explains and serves through
    onnxruntime without torch. Returns the metrics (metrics.json gains an "export" entry).

    A failed parity gate raises `ParityError` (the bundle is kept and marked)."""
    from sightwise.train.pipeline import run_training

    metrics = run_training(cfg, log=log)
    return export_trained(Path(cfg.out), metrics, log=log, progress=cfg.progress)


def export_trained(run_dir: Path, metrics: dict, *, log=print, progress: bool = True) -> dict:
    """The export step of `train_and_export` for a run whose bundle is written (also after a
    distributed run): fp32 ONNX with its parity check, recorded in RUN/metrics.json."""
    report = export_bundle(run_dir / "bundle", log=log, progress=progress)
    metrics["export"] = {"fp32_passed": bool(report["passed"]), "split": report["split"],
                         "n": report["n"], "fp32": report["fp32"]}
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def export_bundle(
    bundle_path: str | Path, *, int8: bool = False, calib: str | Path | None = None,
    opset: int = 17, force: bool = False, edge_dir: str | Path | None = None,
    threads: int | None = None, log=print, calib_size: int = DEFAULT_CALIB_SIZE, seed: int = 0,
    gate: Gate = GATE, progress: bool = True,
) -> dict:
    """Export, check parity on the test split, record it; returns the parity dict.

    Raises `ParityError` (after marking the bundle) when `gate` fails, unless `force`.
    `calib` is a folder of images to calibrate int8 on instead of `calib_size` seeded
    training images of the manifest.
    """
    bundle = load_bundle(bundle_path)
    if bundle.task != "classification":
        raise BundleError(f"{bundle.path}: export handles classification bundles, not {bundle.task}")
    if edge_dir is not None:
        check_edge_target(Path(edge_dir))  # before minutes of work, not after
    pre = bundle.preprocessing
    model = load_classifier(bundle)
    images, labels, split = _parity_images(bundle, log)
    log(f"parity set: {len(labels)} {split} images")
    torch_logits = _torch_logits(model, images, pre)
    stage = Path(tempfile.mkdtemp(dir=bundle.path, prefix=".export-"))
    try:
        t0 = time.perf_counter()
        export_onnx(model, pre.size, stage / FP32, opset=opset)
        save_head(model, stage / HEAD)
        log(f"exported {FP32} (opset {opset}) in {time.perf_counter() - t0:.1f}s")
        fp32_logits = _onnx_logits(stage / FP32, images, pre, threads)
        int8_logits, size_ratio, calib_info = None, None, None
        if int8:
            int8_logits, size_ratio, calib_info = _make_int8(
                bundle, stage, images, calib=calib, n=calib_size, seed=seed, threads=threads, log=log,
                progress=progress)
        report = parity_report(labels, torch_logits, fp32_logits, int8_logits,
                               bundle.temperature, split=split, size_ratio=size_ratio, gate=gate)
        atomic_write_json(stage / PARITY, report)
        _move_into(stage, bundle.path, drop=[] if int8 else [INT8])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    entry = _export_entry(report, opset=opset, force=force, int8=int8, calib=calib_info)
    meta = bundle.meta.to_dict()
    write_bundle_meta(bundle.path, {**meta, "export": entry})
    _log_report(report, log)
    if not report["passed"] and not force:
        raise ParityError(
            f"parity gate failed for {bundle.path}:\n{failure_message(report['checks'])}\n"
            "the bundle is marked (bundle.json export.parity_passed = false); "
            "re-run with --force (force=True) to keep the export anyway")
    if edge_dir is not None:
        name = INT8 if int8 and entry["int8_passed"] else FP32
        out = write_edge_package(load_bundle(bundle.path), edge_dir, model_name=name,
                                 parity=report, opset=opset)
        log(f"wrote edge package {out} ({'int8' if name == INT8 else 'fp32'})")
    return report


def _parity_images(bundle: Bundle, log) -> tuple[np.ndarray, np.ndarray, str]:
    """The test split (the validation split only when the data had no test split)."""
    split = "test"
    samples = bundle_samples(bundle, "test")
    if not samples:
        split, samples = "val", bundle_samples(bundle, "val")
        log("the manifest has no test split; checking parity on the validation split")
    images, labels = load_images(unchanged(samples, log), bundle.preprocessing, log,
                                 what=f"{split}-split")
    return images, labels, split


def _torch_logits(model, images: np.ndarray, pre: Preprocessing, bs: int = 32) -> np.ndarray:
    """The reference: eager PyTorch fed through the trainer's own input path (to_input)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[i:i + bs])), pre)
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def _onnx_logits(path: Path, images: np.ndarray, pre: Preprocessing, threads, bs: int = 32):
    """ONNX Runtime fed through the runtime's input path (numpy normalize)."""
    session = make_session(path, threads)
    out = [run_logits(session, normalize(images[i:i + bs], pre), bs)
           for i in range(0, len(images), bs)]
    return np.concatenate(out)


def _make_int8(bundle: Bundle, stage: Path, images: np.ndarray, *, calib, n: int, seed: int,
               threads, log, progress: bool):
    """Quantise the staged fp32 graph; int8 logits on the parity images, size ratio, info."""
    t0 = time.perf_counter()
    calib_images, source = calibration_images(bundle, calib, n=n, seed=seed, log=log)
    log(f"quantising to int8 on {len(calib_images)} images (a few minutes on a laptop CPU; "
        "calibration holds every activation: ~7 GB for 100 images at 224 px)")
    kept_float = quantize_int8(stage / FP32, stage / INT8, calib_images, bundle.preprocessing,
                               progress=progress)
    ratio = (stage / FP32).stat().st_size / (stage / INT8).stat().st_size
    log(f"quantised {INT8} on {len(calib_images)} images from {source} in "
        f"{time.perf_counter() - t0:.1f}s ({ratio:.1f}x smaller)")
    logits = _onnx_logits(stage / INT8, images, bundle.preprocessing, threads)
    return logits, ratio, {"source": source, "n": int(len(calib_images)), "seed": seed,
                           **QUANTIZATION_METHOD, "kept_float": kept_float}


def _move_into(stage: Path, bundle_dir: Path, drop: list[str]) -> None:
    for f in sorted(stage.iterdir()):
        os.replace(f, bundle_dir / f.name)
    for name in drop:  # an int8 graph from an earlier export no longer matches model.onnx
        (bundle_dir / name).unlink(missing_ok=True)


def _export_entry(report: dict, *, opset: int, force: bool, int8: bool, calib) -> dict:
    checks = report["checks"]
    summary = {k: report[k] for k in ("split", "n", "torch", "fp32", "int8")}
    return {
        "opset": opset,
        "files": [FP32, HEAD, PARITY] + ([INT8] if int8 else []),
        "parity_passed": bool(report["passed"]),
        "forced": bool(force and not report["passed"]),
        "fp32_passed": all(c["passed"] for c in checks if c["name"].startswith("fp32")),
        "int8_passed": (all(c["passed"] for c in checks if c["name"].startswith("int8"))
                        if int8 else None),
        "failed_checks": [c["message"] for c in checks if not c["passed"]],
        "parity": summary,
        "calibration": calib,
        "cam_head": HEAD,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _log_report(report: dict, log) -> None:
    line = (f"parity on {report['n']} {report['split']} images: PyTorch accuracy "
            f"{report['torch']['accuracy']:.2%}; fp32 agreement {report['fp32']['agreement']:.2%}, "
            f"max |dp| {report['fp32']['max_abs_dprob']:.1e}")
    if report.get("int8"):
        q = report["int8"]
        line += (f"; int8 accuracy {q['accuracy']:.2%}, agreement {q['agreement']:.2%}, "
                 f"max |dp| {q['max_abs_dprob']:.1e}, {q['size_ratio']:.1f}x smaller")
    log(line + (" -- gate passed" if report["passed"] else " -- GATE FAILED"))
