"""Gates against hand-computed values: recall floors from a confusion matrix, absolute and
relative regression, ECE, latency percentiles, size, and the monitor / audit seams with
stand-ins (skipped, not passed or failed, when the piece is missing)."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.pipeline.gates import (
    describe_failure,
    latency_p95_ms,
    machine_gates,
    per_class_recall,
    quality_gates,
    regression_gates,
)
from sightwise.pipeline.seams import Seams, audit_gate, label_free_gate, monitor_window

# 10 test images: 4 "ok" (3 right), 4 "scratch" (4 right), 2 "dent" (1 right).
CONFUSION = [[3, 1, 0], [0, 4, 0], [1, 0, 1]]
EVALUATION = {"n": 10, "accuracy": 0.8, "accuracy_ci": [0.5, 1.0], "macro_f1": 0.7667,
              "ece": 0.04,
              "per_class_recall": {"ok": 0.75, "scratch": 1.0, "dent": 0.5},
              "per_class_support": {"ok": 4, "scratch": 4, "dent": 2}}


def _by_name(gates):
    return {g["name"]: g for g in gates}


def test_recall_from_the_confusion_matrix():
    assert per_class_recall(CONFUSION) == {0: 0.75, 1: 1.0, 2: 0.5}


def test_quality_gates_on_hand_numbers():
    g = _by_name(quality_gates(EVALUATION, {"min_accuracy": 0.8, "min_macro_f1": 0.8,
                                            "min_recall": 0.6, "max_ece": 0.05}))
    assert g["min_accuracy"]["passed"] is True  # 0.8 >= 0.8: the floor itself passes
    assert (g["min_macro_f1"]["value"], g["min_macro_f1"]["passed"]) == (0.7667, False)
    assert [g[f"min_recall[{c}]"]["passed"] for c in ("ok", "scratch", "dent")] == [True, True, False]
    assert g["min_recall[dent]"]["detail"] == "2 test images"
    assert g["max_ece"]["passed"] is True
    assert describe_failure(g["min_recall[dent]"]) == "min_recall[dent]: 0.5 < 0.6 (2 test images)"


def test_per_class_floors_and_unknown_classes():
    g = _by_name(quality_gates(EVALUATION, {"min_recall": {"dent": 0.5, "crack": 0.9}}))
    assert g["min_recall[dent]"]["passed"] is True
    crack = g["min_recall[crack]"]
    assert crack["status"] == "failed" and "no class 'crack'" in crack["detail"]


def test_regression_absolute_and_relative():
    comp = {"method": "same-test-data", "n": 10,
            "candidate": {"accuracy": 0.85, "macro_f1": 0.80},
            "holder": {"accuracy": 0.90, "macro_f1": 0.84}}
    limits = {"max_regression": 0.05, "max_relative_regression": 0.04, "regression_metric": "macro_f1"}
    g = _by_name(regression_gates(comp, limits, "production v1"))
    assert g["max_regression"]["value"] == pytest.approx(0.04) and g["max_regression"]["passed"]
    assert g["max_relative_regression"]["value"] == pytest.approx(0.04 / 0.84)
    assert g["max_relative_regression"]["passed"] is False  # 4.76 % > 4 %
    g = _by_name(regression_gates(comp, {**limits, "regression_metric": "accuracy"}, "production v1"))
    assert g["max_regression"]["value"] == pytest.approx(0.05) and g["max_regression"]["passed"]
    skipped = regression_gates(None, limits, None)
    assert {x["status"] for x in skipped} == {"skipped"} and all(x["passed"] is None for x in skipped)
    failed = regression_gates({"method": "not-comparable", "reason": "no common image"}, limits, "p v1")
    assert {x["status"] for x in failed} == {"failed"} and "no common image" in failed[0]["detail"]


def test_latency_percentiles_match_numpy(monkeypatch):
    """A clock that advances by known steps: the p95 is numpy's of exactly those steps."""
    import sightwise.pipeline.gates as gates

    steps = iter(np.arange(1, 51) * 1e-3)  # 1 ms, 2 ms, ... 50 ms
    t = [0.0]

    def clock():
        return t[0]

    def run_once():
        if warm[0] > 0:
            warm[0] -= 1
            return
        t[0] += next(steps)

    warm = [5]
    monkeypatch.setattr(gates.time, "perf_counter", clock)
    res = latency_p95_ms(run_once, warmup=5, runs=50)
    assert res["p95_ms"] == pytest.approx(np.percentile(np.arange(1, 51), 95))
    assert res["p50_ms"] == pytest.approx(25.5)
    g = _by_name(machine_gates({**res, "graph": "model.onnx", "model_mb": 13.4},
                               {"max_latency_p95_ms": 40, "max_model_mb": 10}))
    assert g["max_latency_p95_ms"]["passed"] is False and g["max_model_mb"]["passed"] is False


def test_label_free_gate_with_a_stand_in_monitor():
    windows = {"cand": {"estimated_accuracy": 0.81, "window": 7, "n": 200},
               "prod": {"estimated_accuracy": 0.84, "window": 7, "n": 200}}
    seams = Seams(window=lambda b: windows.get(b))
    g = label_free_gate(seams, "cand", "prod", 0.02, stage="gates")
    assert (g["value"], g["threshold"], g["passed"]) == (0.81, pytest.approx(0.82), False)
    assert label_free_gate(seams, "cand", "prod", 0.05, stage="gates")["passed"] is True
    for cand, prod, why in (("cand", None, "no production version"),
                            ("cand", "none", "no monitored window of production"),
                            ("none", "prod", "no monitored window of the candidate")):
        g = label_free_gate(seams, cand, prod, 0.0, stage="gates")
        assert g["status"] == "skipped" and g["passed"] is None and why in g["detail"]


def test_a_missing_monitor_or_audit_is_skipped_with_the_reason(tmp_path):
    provider, why = monitor_window(None)
    assert provider is None and "[monitor] log is not set" in why
    g = label_free_gate(Seams(), "cand", "prod", 0.0, stage="gates")
    assert g["status"] == "skipped" and "no monitored window" in g["detail"]

    def broken(_bundle):
        raise RuntimeError("no reference.npz")

    g = label_free_gate(Seams(window=broken), "c", "p", 0.0, stage="gates")
    assert g["status"] == "skipped" and "no reference.npz" in g["detail"]
    g = audit_gate(Seams(), tmp_path, tmp_path, 0.05, progress=False, stage="data")
    assert g["status"] == "skipped" and "not installed" in g["detail"]
    fake = Seams(audit=lambda m, d, p: {"share": 0.06, "suspects": 3, "n": 50, "source": str(m)})
    g = audit_gate(fake, tmp_path, tmp_path, 0.05, progress=False, stage="data")
    assert (g["value"], g["passed"], g["detail"]) == (0.06, False, "3 of 50 labels suspected "
                                                      "(confident learning)")
