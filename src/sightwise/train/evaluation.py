"""Evaluate the chosen model on the test split: calibration, metrics, figures, report."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from sightwise.bundle import atomic_write_json
from sightwise.evaluate.calibration import Calibration, choose_temperature, softmax
from sightwise.evaluate.figures import (
    plot_confusion_matrix,
    plot_mistakes_grid,
    plot_reliability_diagram,
    plot_training_curves,
)
from sightwise.evaluate.metrics import classification_metrics
from sightwise.evaluate.report import Note, write_report
from sightwise.train.overlays import MAX_CLASSES_SHOWN, MAX_MISTAKES_SHOWN, overlay_figure


def evaluate_and_report(cfg, pre, data, trained, run_dir: Path, budget, log) -> dict:
    classes = data.dataset.classes
    cache = data.cache
    x_test, y_test = cache.subset("test")
    _, y_val = cache.subset("val")
    calib = (choose_temperature(trained.val_logits, y_val) if len(y_val)
             else Calibration(1.0, None, 0.0, 1.0))
    temperature = calib.temperature
    probs_raw = softmax(trained.test_logits)
    probs = softmax(trained.test_logits, temperature)
    test = classification_metrics(y_test, probs, classes, seed=cfg.seed,
                                  probs_uncalibrated=probs_raw)
    val_acc = float((trained.val_logits.argmax(1) == y_val).mean()) if len(y_val) else None
    metrics = {
        "test": test,
        "val": {"n": int(len(y_val)), "accuracy": val_acc},
        "data": {
            "manifest_sha256": data.manifest_sha256,
            "layout": data.dataset.layout,
            "classes": classes,
            "split_counts": data.dataset.counts(),
            "n_images": len(cache.samples),
            "skipped": [{"path": s.source, "reason": s.reason} for s in data.skipped],
            "leakage": data.leakage,
        },
        "calibration": calib.to_dict(),
        "strategy": {"requested": cfg.strategy, "chosen": trained.strategy,
                     "candidates": trained.candidates},
        "model": cfg.model_name,
        "preprocessing": pre.to_dict(),
        "history": trained.history,
        "timing": {"decode_seconds": data.decode_seconds,
                   "train_seconds": trained.train_seconds,
                   "budget_seconds": cfg.budget_s,
                   "total_seconds": budget.elapsed()},
    }
    figures = {**_training_curves(run_dir, metrics),
               **_figures(run_dir, test, classes, probs_raw, probs, y_test, x_test)}
    overlay = overlay_figure(trained.model, x_test, y_test, probs, classes, pre,
                             run_dir / "figures" / "cam_overlays.png")
    if overlay:
        figures[f"Where the model looks: each test image beside the class activation map of "
                f"its predicted class (the most confident correct ones for up to "
                f"{MAX_CLASSES_SHOWN} classes, then up to {MAX_MISTAKES_SHOWN} most confident "
                f"mistakes)"] = overlay
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir / "report.html", title=f"Sightwise run: {Path(cfg.out).name}",
                 metrics=test, figures=figures, sections=_sections(metrics),
                 run_info=_run_info(cfg, metrics, calib),
                 splits=metrics["data"]["split_counts"])
    log(f"test: accuracy {test['accuracy']:.4f} [{test['accuracy_ci'][0]:.3f}, "
        f"{test['accuracy_ci'][1]:.3f}], macro-F1 {test['macro_f1']:.4f}, "
        f"ECE {test['ece_uncalibrated']:.4f} -> {test['ece']:.4f} ({_describe(calib)}), "
        f"n={test['n']}")
    return metrics


def _describe(c: Calibration) -> str:
    if c.temperature != 1.0:
        return f"T={c.temperature:.2f}, p={c.p_value:.2g}"
    if c.fitted is None:
        return "T=1: no validation images to fit it on"
    return f"T=1: fitted {c.fitted:.2f} not significant, p={c.p_value:.2g}"


def _figures(run_dir, test, classes, probs_raw, probs, y_test, x_test) -> dict:
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    pred = probs.argmax(1)
    mistakes = plot_mistakes_grid(x_test, y_test, pred, probs.max(1), classes,
                                  fig_dir / "mistakes.png")
    return {
        "Confusion matrix (test, row-normalised; cells show counts)": plot_confusion_matrix(
            np.array(test["confusion_matrix"]), classes, fig_dir / "confusion_matrix.png"),
        "Reliability diagram (test), before and after temperature scaling":
            plot_reliability_diagram(probs_raw, probs, y_test, fig_dir / "reliability.png"),
        "Most confident mistakes (test)": mistakes if mistakes is not None else Note(
            f"no mistakes on the test split (n = {len(y_test)})."),
    }


def _training_curves(run_dir: Path, metrics: dict) -> dict:
    """The fine-tuning curves, or a sentence saying why there are none."""
    history, chosen = metrics["history"], metrics["strategy"]["chosen"]
    caption = "Training curves"
    if not history:
        return {caption: Note(
            "a linear probe is one logistic-regression fit on the frozen backbone's features "
            "(its regularisation chosen on the validation split), not trained epoch by epoch, "
            "so it has no training curve.")}
    members = len({h.get("member", 1) for h in history})
    what = "training from scratch" if chosen == "scratch" else "fine-tuning"
    caption += (f" ({what}, {members} ensemble members)" if members > 1 else f" ({what})")
    caption += ": training and validation loss, and validation accuracy, per epoch"
    if chosen == "linear-probe":  # auto fine-tuned, then kept the probe
        caption += ("; auto kept the linear probe, whose validation accuracy was at least as "
                    "high: these curves are the fine-tuning it was compared with")
    path = run_dir / "figures" / "training_curves.png"
    return {caption: plot_training_curves(history, path, title=what.capitalize())}


def _run_info(cfg, metrics, calib: Calibration) -> dict:
    t = metrics["timing"]
    return {
        "data": cfg.data,
        "strategy": f"{metrics['strategy']['chosen']} (asked: {cfg.strategy})",
        "model": metrics["model"],
        "image size": metrics["preprocessing"]["size"],
        "seed": cfg.seed,
        "manifest sha256": metrics["data"]["manifest_sha256"],
        "images used / skipped": f"{metrics['data']['n_images']} / "
                                 f"{len(metrics['data']['skipped'])}",
        "train seconds": f"{t['train_seconds']:.1f}",
        "calibration": _describe(calib),
    }


def _sections(metrics) -> list[tuple[str, str]]:
    out = []
    cands = metrics["strategy"]["candidates"]
    if cands:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v.get('val_accuracy', float('nan')):.4f}"
                       f"</td></tr>" for k, v in cands.items())
        out.append(("Strategies tried (validation accuracy)",
                    f"<table><tr><th>strategy</th><th>val accuracy</th></tr>{rows}</table>"))
    skipped = metrics["data"]["skipped"]
    if skipped:
        rows = "".join(f"<tr><td>{html.escape(s['path'])}</td><td>{html.escape(s['reason'])}</td></tr>"
                       for s in skipped)
        out.append((f"Skipped images ({len(skipped)})",
                    f"<table><tr><th>path</th><th>reason</th></tr>{rows}</table>"))
    if metrics["data"]["leakage"]:
        out.append(("Leakage", f"<p>{len(metrics['data']['leakage'])} identical files appear in "
                               "more than one split (see metrics.json).</p>"))
    return out
