"""The folded linear-probe head reproduces scikit-learn's own probabilities."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from sightwise.train.probe import fit_probe


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_folded_head_equals_sklearn_pipeline(n_classes):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (n_classes, 16))
    y = np.repeat(np.arange(n_classes), 30)
    X = centers[y] * rng.uniform(0.5, 5, 16) + rng.normal(0, 2, (len(y), 16)) + 10
    yv = np.repeat(np.arange(n_classes), 10)
    Xv = centers[yv] * 1.0 + rng.normal(0, 2, (len(yv), 16)) + 10
    res = fit_probe(X, y, Xv, yv, n_classes, Cs=(0.1,))
    mu, scale = X.mean(0), X.std(0).mean()
    ref = LogisticRegression(C=0.1, max_iter=3000).fit((X - mu) / scale, y)
    ours = _softmax(Xv @ res.weight.T + res.bias)
    np.testing.assert_allclose(ours, ref.predict_proba((Xv - mu) / scale), atol=1e-4)


def test_class_absent_from_train_gets_zero_probability():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 2], 20)
    X = rng.normal(0, 1, (40, 8)) + y[:, None]
    res = fit_probe(X, y, X, y, 3, Cs=(1.0,))
    p = _softmax(X @ res.weight.T + res.bias)
    assert p[:, 1].max() < 1e-6


def test_C_is_chosen_on_validation_accuracy():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 40)
    X = rng.normal(0, 1, (80, 50)) + 0.4 * y[:, None]
    Xv = rng.normal(0, 1, (80, 50)) + 0.4 * y[:, None]
    Cs = (1e-4, 1e-2, 1.0)
    res = fit_probe(X, y, Xv, y, 2, Cs=Cs)
    accs = []
    mu, scale = X.mean(0), X.std(0).mean()
    keys = []
    for C in Cs:
        m = LogisticRegression(C=C, max_iter=3000).fit((X - mu) / scale, y)
        accs.append((m.predict((Xv - mu) / scale) == y).mean())
        keys.append((accs[-1], -log_loss(y, m.predict_proba((Xv - mu) / scale))))
    assert res.C == Cs[max(range(len(Cs)), key=lambda i: keys[i])]
    assert res.val_accuracy == pytest.approx(max(accs))
