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
    y_val = cache.subset("val")[1] if trained.val_labels is None else trained.val_labels
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
        "val": {"n": int(len(y_val)), "accuracy": val_acc,
                "split": "validation" if trained.kfold is None else "out-of-fold (train+val)"},
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
        "choices": trained.choices,
        "kfold": trained.kfold,
        "warnings": split_warnings(test, trained.kfold),
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
                 splits=metrics["data"]["split_counts"],
                 warnings=metrics["warnings"], kfold=trained.kfold)
    log(f"test: accuracy {test['accuracy']:.4f} [{test['accuracy_ci'][0]:.3f}, "
        f"{test['accuracy_ci'][1]:.3f}], macro-F1 {test['macro_f1']:.4f}, "
        f"ECE {test['ece_uncalibrated']:.4f} -> {test['ece']:.4f} ({_describe(calib)}), "
        f"n={test['n']}")
    if trained.kfold:
        k = trained.kfold
        log(f"{k['k']}-fold (train+val, n={k['n']}): accuracy {k['accuracy']:.4f} "
            f"[{k['accuracy_ci'][0]:.3f}, {k['accuracy_ci'][1]:.3f}], macro-F1 "
            f"{k['macro_f1']:.4f} [{k['macro_f1_ci'][0]:.3f}, {k['macro_f1_ci'][1]:.3f}]")
    for warning in metrics["warnings"]:
        log(f"warning: {warning}")
    return metrics


# A test split whose 95 % accuracy interval is wider than this cannot support the
# differences a report discusses (strategies a few points apart, one version against the
# last): the report and the summary say so.
MAX_TEST_CI_WIDTH = 0.10


def split_warnings(test: dict, kfold: dict | None) -> list[str]:
    """What the test split cannot support, in words (empty when its interval is narrow).

    The interval is the exact binomial (Clopper-Pearson) one of the accuracy: unlike the
    bootstrap's, it does not shrink to a point when every test image is right.

    >>> split_warnings({"n": 38, "accuracy": 29 / 38}, None)[0][:72]
    'the test split is small (n=38): its accuracy 0.763 has the 95 % interval'
    >>> split_warnings({"n": 270, "accuracy": 1.0}, None)
    []
    """
    from scipy.stats import binomtest

    n = int(test["n"])
    right = round(test["accuracy"] * n)
    ci = binomtest(right, n).proportion_ci(confidence_level=0.95, method="exact")
    if ci.high - ci.low <= MAX_TEST_CI_WIDTH:
        return []
    tail = (f"the {kfold['k']}-fold estimate over n={kfold['n']} train+val images is the "
            "tighter figure" if kfold else
            "`--cv K` adds a k-fold estimate over all train+val images")
    return [f"the test split is small (n={n}): its accuracy {test['accuracy']:.3f} has the 95 % "
            f"interval [{ci.low:.3f}, {ci.high:.3f}] (exact binomial), "
            f"{100 * (ci.high - ci.low):.0f} points wide, so differences smaller than that "
            f"(between strategies, runs or versions) are not supported by it; {tail}"]


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
    choices = metrics.get("choices") or {}
    if choices:
        rows = "".join(f"<tr><td>{html.escape(name.replace('_', ' '))}</td>"
                       f"<td>{html.escape(str(c.get('value')))}</td>"
                       f"<td>{html.escape(str(c.get('reason', '')))}</td></tr>"
                       for name, c in choices.items())
        out.append(("How train decided (details in metrics.json, \"choices\")",
                    f"<table><tr><th>choice</th><th>value</th><th>why</th></tr>{rows}</table>"))
    cands = metrics["strategy"]["candidates"]
    if cands:
        split = metrics["val"].get("split", "validation")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v.get('val_accuracy', float('nan')):.4f}"
                       f"</td><td>{_kfold_cell(v.get('kfold'))}</td></tr>" for k, v in cands.items())
        out.append((f"Strategies tried ({split} accuracy, n = {metrics['val']['n']})",
                    f"<table><tr><th>strategy</th><th>{html.escape(split)} accuracy</th>"
                    f"<th>k-fold accuracy [95 % CI]</th></tr>{rows}</table>"))
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


def _kfold_cell(kfold: dict | None) -> str:
    if not kfold:
        return ""
    lo, hi = kfold["accuracy_ci"]
    return f"{kfold['accuracy']:.4f} [{lo:.3f}, {hi:.3f}] ({kfold['k']} folds, n = {kfold['n']})"
