"""Linear probe: logistic regression on cached frozen features, folded into a Linear head.

scikit-learn fits it in seconds. Features are centred and divided by ONE global scale, not
per-feature standardised: per-feature scaling divides the weights of near-constant
features by their tiny sigma, and int8 quantisation's rounding noise in those features is
then multiplied by the amplified weights into wrong answers (the NEU measurement is in
docs/experiments/2026-12-02-train-defaults.md, "Measurements behind earlier defaults").
The centring and scale are folded into the weights (W' = W / s, b' = b - W' mu) so the
network needs no extra layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss


@dataclass
class ProbeResult:
    weight: np.ndarray  # (C, D), acting on raw (unscaled) features
    bias: np.ndarray  # (C,)
    C: float
    val_accuracy: float
    fit_seconds: float


def fit_probe(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    *,
    Cs=(0.01, 0.03, 0.1, 0.3, 1.0),
    class_weight: str | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Choose C on validation accuracy; ties (common: small validation sets are often all
    right) go to the lower validation log loss, i.e. the confident-and-right model: its
    wider margins leave int8 rounding less room to flip an answer (measured on NEU: the
    experiment note named in the module docstring)."""
    t0 = time.perf_counter()
    mu = f_train.mean(0)
    scale = float(f_train.std(0).mean()) or 1.0
    xt, xv = (f_train - mu) / scale, (f_val - mu) / scale
    best = None
    for C in Cs:
        lr = LogisticRegression(C=C, max_iter=3000, class_weight=class_weight, random_state=seed)
        lr.fit(xt, y_train)
        acc = float((lr.predict(xv) == y_val).mean()) if len(y_val) else 0.0
        loss = (log_loss(y_val, lr.predict_proba(xv), labels=lr.classes_)
                if len(y_val) and set(y_val) <= set(lr.classes_) else 0.0)
        if best is None or (acc, -loss) > (best[0], -best[3]):
            best = (acc, C, lr, loss)
    acc, C, lr, _ = best
    W, b = _full_coef(lr, num_classes)
    W_raw = W / scale
    b_raw = b - W_raw @ mu
    return ProbeResult(W_raw.astype(np.float32), b_raw.astype(np.float32), C, acc,
                       time.perf_counter() - t0)


def _full_coef(lr: LogisticRegression, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's (C,D) coefficients; binary problems give one row, classes absent from
    train give none: expand to all `num_classes` rows (absent classes get -inf-ish bias)."""
    D = lr.coef_.shape[1]
    W = np.zeros((num_classes, D))
    b = np.full(num_classes, -1e4)
    if len(lr.classes_) == 2:
        # P(class1) = sigmoid(w.x + b) == softmax over logits (0, w.x + b)
        c0, c1 = lr.classes_
        W[c0], b[c0] = 0.0, 0.0
        W[c1], b[c1] = lr.coef_[0], lr.intercept_[0]
    else:
        for row, c in enumerate(lr.classes_):
            W[c], b[c] = lr.coef_[row], lr.intercept_[row]
    return W, b
