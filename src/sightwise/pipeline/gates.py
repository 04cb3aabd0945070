"""Gates: each a measured value, a threshold and a verdict, in the summary as
``{"name", "value", "threshold", "passed", "status", "stage", "detail"}``.

`status` is "passed", "failed" or "skipped" (then `passed` is null and `detail` says why:
no production version yet, no monitored window, the audit is not installed). A skipped gate
neither blocks nor blesses a candidate; the run's summary lists it under "skipped_gates", so
every entry of its "gates" has a boolean "passed" (the --json contract). The functions here
compute gates from plain numbers so each can be checked by hand; the stages feed them what
they measured.
"""

from __future__ import annotations

import time

import numpy as np


def gate(name: str, value: float, threshold: float, *, at_most: bool, stage: str,
         detail: str = "") -> dict:
    """`value <= threshold` (at_most) or `value >= threshold`, with a little float slack.

    >>> gate("min_accuracy", 0.9, 0.95, at_most=False, stage="gates")["status"]
    'failed'
    """
    ok = value <= threshold + 1e-12 if at_most else value >= threshold - 1e-12
    return {"name": name, "value": float(value), "threshold": float(threshold),
            "passed": bool(ok), "status": "passed" if ok else "failed", "stage": stage,
            "detail": detail}


def skipped(name: str, threshold, reason: str, *, stage: str) -> dict:
    return {"name": name, "value": None, "threshold": threshold, "passed": None,
            "status": "skipped", "stage": stage, "detail": reason}


def failed(name: str, threshold, reason: str, *, stage: str, value=None) -> dict:
    """A gate that could not be measured where a measurement was required."""
    return {"name": name, "value": value, "threshold": threshold, "passed": False,
            "status": "failed", "stage": stage, "detail": reason}


def first_failure(gates: list[dict]) -> dict | None:
    return next((g for g in gates if g["status"] == "failed"), None)


def describe_failure(g: dict) -> str:
    """'min_accuracy: 0.4167 < 0.95 (...)': the failing gate named, by how much."""
    if g["value"] is None:
        return f"{g['name']}: {g['detail']}"
    op = "<" if g["name"].startswith("min") or g["name"] in _AT_LEAST else ">"
    text = f"{g['name']}: {g['value']:.4g} {op} {g['threshold']:.4g}"
    return text + (f" ({g['detail']})" if g.get("detail") else "")


_AT_LEAST = {"parity", "label_free_accuracy", "shadow_records", "shadow_agreement",
             "shadow_labelled_accuracy"}


# -- quality of the candidate on its own test split -------------------------------------------


def per_class_recall(confusion) -> dict[int, float | None]:
    """Recall of each class (row = truth): diagonal / row sum; None for a class absent.

    >>> per_class_recall([[3, 1], [0, 0]])
    {0: 0.75, 1: None}
    """
    cm = np.asarray(confusion, np.float64)
    rows = cm.sum(1)
    return {i: (float(cm[i, i] / rows[i]) if rows[i] > 0 else None) for i in range(len(cm))}


def quality_gates(evaluation: dict, limits: dict, *, stage: str = "gates") -> list[dict]:
    """min_accuracy, min_macro_f1, min_recall (every class, or per named class), max_ece."""
    out = []
    n = evaluation.get("n")
    for key, metric in (("min_accuracy", "accuracy"), ("min_macro_f1", "macro_f1")):
        if key in limits:
            ci = evaluation.get(f"{metric}_ci")
            detail = f"test n={n}" + (f", 95 % CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            out.append(gate(key, evaluation[metric], limits[key], at_most=False, stage=stage,
                            detail=detail))
    floors = limits.get("min_recall")
    if floors is not None:
        recall = evaluation["per_class_recall"]
        wanted = floors if isinstance(floors, dict) else {c: floors for c in recall}
        for cls, floor in wanted.items():
            name = f"min_recall[{cls}]"
            if cls not in recall:
                out.append(failed(name, floor, f"no class {cls!r} in the model", stage=stage))
            elif recall[cls] is None:
                out.append(skipped(name, floor, f"no test image of class {cls!r}", stage=stage))
            else:
                support = evaluation.get("per_class_support", {}).get(cls)
                out.append(gate(name, recall[cls], floor, at_most=False, stage=stage,
                                detail=f"{support} test images" if support is not None else ""))
    if "max_ece" in limits:
        out.append(gate("max_ece", evaluation["ece"], limits["max_ece"], at_most=True,
                        stage=stage, detail="calibrated, 15 bins, test split"))
    return out


def regression_gates(comparison: dict | None, limits: dict, holder: str | None, *,
                     stage: str = "gates", missing: str = "no production version to compare with"
                     ) -> list[dict]:
    """Drop of the regression metric against production: absolute (holder - candidate) and
    relative ((holder - candidate) / holder). Skipped without a production version (`missing`
    says why); failed when the two cannot be compared (the last resort, with the reason)."""
    metric = limits.get("regression_metric", "macro_f1")
    keys = [k for k in ("max_regression", "max_relative_regression") if k in limits]
    if comparison is None:
        return [skipped(k, limits[k], missing, stage=stage) for k in keys]
    if comparison["method"] == "not-comparable":
        return [failed(k, limits[k], f"not comparable with {holder}: {comparison['reason']}",
                       stage=stage) for k in keys]
    c, h = comparison["candidate"][metric], comparison["holder"][metric]
    drop = h - c
    where = (f"{metric} {c:.4f} vs {holder}'s {h:.4f}, "
             + ("same test data" if comparison["method"] == "same-test-data" else
                f"{comparison['n']} test images neither trained on, difference 95 % CI "
                "[{:+.4f}, {:+.4f}]".format(*comparison["difference"][f"{metric}_ci"]))
             + f", n={comparison['n']}")
    out = []
    if "max_regression" in limits:
        out.append(gate("max_regression", drop, limits["max_regression"], at_most=True,
                        stage=stage, detail=where))
    if "max_relative_regression" in limits:
        rel = drop / h if h > 0 else 0.0
        out.append(gate("max_relative_regression", rel, limits["max_relative_regression"],
                        at_most=True, stage=stage, detail=where))
    return out


# -- the graph on this machine ----------------------------------------------------------------


def latency_p95_ms(run_once, *, warmup: int = 5, runs: int = 50) -> dict:
    """p50/p95 of `run_once()` in milliseconds over `runs` timed calls after `warmup`."""
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "runs": runs, "batch": 1}


def measure_graph(bundle, *, int8: bool = False, threads: int | None = None) -> dict:
    """Latency of one image through the ONNX graph `Bundle.graph()` allows, and its size."""
    from sightwise.runtime import Predictor

    pred = Predictor(bundle, int8=int8, threads=threads)
    s = pred.preprocessing.size
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    timing = latency_p95_ms(lambda: pred.run(x, ["logits"]))
    graph = bundle.graph(int8=int8)
    return {"graph": graph.name, "bytes": graph.stat().st_size,
            "model_mb": graph.stat().st_size / 1e6, **timing}


def machine_gates(measured: dict, limits: dict, *, stage: str = "gates") -> list[dict]:
    out = []
    if "max_latency_p95_ms" in limits:
        out.append(gate("max_latency_p95_ms", measured["p95_ms"], limits["max_latency_p95_ms"],
                        at_most=True, stage=stage,
                        detail=f"{measured['graph']}, batch 1, {measured['runs']} runs"))
    if "max_model_mb" in limits:
        out.append(gate("max_model_mb", measured["model_mb"], limits["max_model_mb"],
                        at_most=True, stage=stage, detail=measured["graph"]))
    return out
