"""Synthetic model outputs for monitor tests: a reference and streams from known laws.

Embeddings are Gaussian in 64 dimensions with a few strong directions; each of 3 classes has
its own mean, and probabilities are a softmax of the class evidence, so probabilities,
predicted classes and embeddings move together when the stream shifts.
"""

from __future__ import annotations

import numpy as np

D, C = 64, 3


def _basis() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    means = rng.normal(0, 2.0, (C, D))
    scale = np.linspace(3.0, 0.3, D)  # a decaying spectrum, like real embeddings
    return means, scale


def outputs(n: int, rng: np.random.Generator, *, shift: float = 0.0, prior=None):
    """(probs (n, C), embeddings (n, D), labels (n,)); `shift` moves every embedding along
    the first axes, `prior` changes the class shares."""
    means, scale = _basis()
    labels = rng.choice(C, n, p=prior)
    emb = means[labels] + rng.normal(size=(n, D)) * scale
    emb[:, :8] += shift
    logits = -0.5 * ((emb[:, None, :] - means[None]) ** 2 / scale ** 2).sum(2) / 8
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return probs.astype(np.float32), emb.astype(np.float32), labels


def reference(n: int = 300, seed: int = 0):
    from sightwise.monitor.reference import fit_reference

    probs, emb, labels = outputs(n, np.random.default_rng(seed))
    ref = fit_reference(probs, emb, labels, components=16, meta={"classes": ["a", "b", "c"]})
    return type(ref)(**{**ref.__dict__, "meta": {**ref.meta, "id": "synthetic0000000"}})


def records(ref, n: int, rng: np.random.Generator, *, t0: float = 1_000_000.0, dt: float = 1.0,
            **shift) -> list[dict]:
    """Log records (as make_records writes them) of n fresh images, dt seconds apart."""
    from sightwise.monitor.live import make_records

    probs, emb, _ = outputs(n, rng, **shift)
    shas = [f"{int(x):064x}" for x in rng.integers(0, 2**62, n)]
    recs = make_records(model="m", version="1", probs=probs, embeddings=emb, reference=ref,
                        sha256s=shas, latencies_ms=np.ones(n))
    for i, r in enumerate(recs):
        r["t"] = t0 + i * dt
    return recs


def window(ref, n: int, rng: np.random.Generator, **shift):
    """(probs, PCA projections, outlier scores, labels) of n fresh images."""
    probs, emb, labels = outputs(n, rng, **shift)
    keys = [f"{int(x):016x}" for x in rng.integers(0, 2**62, n)]
    return probs, ref.project(emb), ref.outlier_scores(emb, keys), labels
