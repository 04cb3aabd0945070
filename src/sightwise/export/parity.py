"""The parity gate: the exported graphs must answer what PyTorch answers.

On the bundle's test split, the float graph must agree with PyTorch's top-1 on >= 99.9 % of
images with every calibrated probability within 1e-3; the int8 graph may lose at most half
a point of accuracy and must agree on >= 99 %. A bundle that fails is marked in bundle.json
and, unless forced, export fails with a message naming the check and the shortfall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sightwise.errors import SightwiseError


class ParityError(SightwiseError):
    """An exported graph does not reproduce the PyTorch model closely enough."""


@dataclass(frozen=True)
class Gate:
    fp32_min_agreement: float = 0.999
    fp32_max_abs_dprob: float = 1e-3
    int8_max_accuracy_drop: float = 0.005  # half a point, as a fraction
    int8_min_agreement: float = 0.99


GATE = Gate()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T), stable for large logits.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray,
            temperature: float) -> dict:
    """Accuracy of `logits`, and top-1 agreement / max |dp| against `ref_logits`.

    >>> ref = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> compare(ref, ref + [[0.0, 3.0], [0.0, 0.0]], np.array([0, 1]), 1.0)["agreement"]
    0.5
    """
    p_ref, p = softmax(ref_logits, temperature), softmax(logits, temperature)
    top = p.argmax(axis=1)
    return {
        "accuracy": float(np.mean(top == labels)),
        "agreement": float(np.mean(top == p_ref.argmax(axis=1))),
        "max_abs_dprob": float(np.abs(p - p_ref).max()),
    }


def parity_report(labels: np.ndarray, torch_logits: np.ndarray, fp32_logits: np.ndarray,
                  int8_logits: np.ndarray | None, temperature: float, *, split: str,
                  size_ratio: float | None = None, gate: Gate = GATE) -> dict:
    """The parity.json record: per-model numbers, each check, and `passed`."""
    torch_acc = float(np.mean(torch_logits.argmax(axis=1) == labels))
    report = {
        "passed": False,
        "split": split,
        "n": int(len(labels)),
        "temperature": float(temperature),
        "torch": {"accuracy": torch_acc},
        "fp32": compare(torch_logits, fp32_logits, labels, temperature),
        "int8": None,
    }
    if int8_logits is not None:
        report["int8"] = {**compare(torch_logits, int8_logits, labels, temperature),
                          "size_ratio": size_ratio}
    report["checks"] = gate_checks(report, gate)
    report["passed"] = all(c["passed"] for c in report["checks"])
    return report


def gate_checks(report: dict, gate: Gate = GATE) -> list[dict]:
    """Each check with its value, its limit and whether it passed.

    >>> r = {"n": 1000, "torch": {"accuracy": 0.9},
    ...      "fp32": {"accuracy": 0.9, "agreement": 0.998, "max_abs_dprob": 2e-4}, "int8": None}
    >>> print(failure_message(gate_checks(r)))  # doctest: +NORMALIZE_WHITESPACE
    fp32 top-1 agreement with PyTorch is 99.80%, below the required 99.90%
    (short by 0.10 points; 2 of 1000 images disagree)
    """
    n = report["n"]
    fp32, int8 = report["fp32"], report.get("int8")
    checks = [
        _min_check("fp32 top-1 agreement with PyTorch", fp32["agreement"],
                   gate.fp32_min_agreement, n),
        _max_check("fp32 max |probability difference| from PyTorch", fp32["max_abs_dprob"],
                   gate.fp32_max_abs_dprob),
    ]
    if int8:
        drop = report["torch"]["accuracy"] - int8["accuracy"]
        checks.append({
            "name": "int8 accuracy drop", "value": drop, "limit": gate.int8_max_accuracy_drop,
            "passed": drop <= gate.int8_max_accuracy_drop + 1e-12,
            "message": (f"int8 accuracy is {int8['accuracy']:.2%} against PyTorch's "
                        f"{report['torch']['accuracy']:.2%}, a drop of {drop * 100:.2f} points "
                        f"(at most {gate.int8_max_accuracy_drop * 100:.2f} allowed)"),
        })
        checks.append(_min_check("int8 top-1 agreement with PyTorch", int8["agreement"],
                                 gate.int8_min_agreement, n))
    return checks


def _min_check(name: str, value: float, limit: float, n: int) -> dict:
    wrong = round((1.0 - value) * n)
    passed = value >= limit
    detail = (f"at least {limit:.2%} required" if passed else
              f"below the required {limit:.2%} (short by {(limit - value) * 100:.2f} points")
    return {"name": name, "value": value, "limit": limit, "passed": passed,
            "message": (f"{name} is {value:.2%}, {detail}; {wrong} of {n} images disagree"
                        + ("" if passed else ")"))}


def _max_check(name: str, value: float, limit: float) -> dict:
    passed = value <= limit
    return {"name": name, "value": value, "limit": limit, "passed": passed,
            "message": (f"{name} is {value:.2e}, within the limit {limit:.0e}" if passed else
                        f"{name} is {value:.2e}, above the limit {limit:.0e} "
                        f"({value / limit:.1f}x the limit)")}


def failure_message(checks: list[dict]) -> str:
    """One line per failed check ('' when all passed)."""
    return "\n".join(c["message"] for c in checks if not c["passed"])
