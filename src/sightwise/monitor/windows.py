"""Tumbling windows of predictions, the drift tests each runs, and the alert rule.

A window closes after `window` predictions, or when a prediction arrives more than
`max_age_s` after the window's first (so a slow stream is still tested); windows with fewer
than `min_n` predictions are listed but not tested. Each tested window runs four tests
against the reference:

- KS on every calibrated-probability column (Bonferroni over the columns),
- chi-square on the predicted-class counts,
- MMD^2 on the PCA-projected embeddings with a permutation p-value,
- a binomial test on the share of Mahalanobis outliers against the reference's rate,

combined by Bonferroni into one family-wise p. `drift` is family p < alpha, so a clean
stream flags at most about one window in 1/alpha; an alert needs `alert_k` drifted windows
among the last `alert_of`. Label-free accuracy is estimated two ways per window: the mean
max calibrated probability (confidence) and ATC (Garg et al., ICLR 2022), each with its
standard error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from sightwise.monitor.reference import Reference, neg_entropy
from sightwise.monitor.stats import (
    chi2_counts,
    family_p,
    gaussian_kernel,
    ks_columns,
    mmd_permutation_test,
    outlier_test,
)

MAX_MMD_REFERENCE = 400  # reference points in the MMD test: its cost grows with their square


@dataclass(frozen=True)
class MonitorConfig:
    window: int = 100
    max_age_s: float = 3600.0
    min_n: int = 20
    alpha: float = 0.01
    permutations: int = 1000
    alert_k: int = 2
    alert_of: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.window < 2 or not 2 <= self.min_n <= self.window:
            raise ValueError(f"window must be >= 2 and min_n within 2..window; got window "
                             f"{self.window}, min_n {self.min_n}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 1 <= self.alert_k <= self.alert_of:
            raise ValueError("alert needs 1 <= alert_k <= alert_of")


DEFAULT_CONFIG = MonitorConfig()


class WindowTester:
    """Runs one window's tests; holds what is shared across windows (the reference's MMD
    kernel block, computed once)."""

    def __init__(self, ref: Reference, config: MonitorConfig = DEFAULT_CONFIG):
        self.ref, self.config = ref, config
        n = len(ref.proj)
        keep = (np.sort(np.random.default_rng(config.seed).choice(n, MAX_MMD_REFERENCE, False))
                if n > MAX_MMD_REFERENCE else np.arange(n))
        self.mmd_ref = ref.proj[keep].astype(np.float64)
        self.bandwidth = float(ref.stats["mmd_bandwidth"])
        self.kxx = gaussian_kernel(self.mmd_ref, self.mmd_ref, self.bandwidth)

    def test(self, probs: np.ndarray, proj: np.ndarray | None = None,
             outlier_scores: np.ndarray | None = None, *, seed: int = 0) -> dict:
        """All tests and accuracy estimates of one window (JSON-ready). `proj` are the PCA
        coordinates (MMD), `outlier_scores` the reference's fold-model distances (the
        outlier share); either may be None when the records lack them."""
        probs = np.asarray(probs, np.float64)
        ref, n = self.ref, len(probs)
        counts = np.bincount(probs.argmax(1), minlength=ref.n_classes)
        p_ks, _ = ks_columns(ref.probs.astype(np.float64), probs)
        _, p_chi2 = chi2_counts(ref.pred_counts, counts)
        p = {"ks": p_ks, "chi2": p_chi2, "mmd": None, "outliers": None}
        out = {"mmd2": None, "outlier_share": None}
        if proj is not None:
            out["mmd2"], p["mmd"] = mmd_permutation_test(
                self.mmd_ref, np.asarray(proj, np.float64), self.bandwidth,
                permutations=self.config.permutations, seed=seed, kxx=self.kxx)
        if outlier_scores is not None:
            k = int(np.sum(np.asarray(outlier_scores) > ref.stats["outlier_threshold"]))
            out["outlier_share"] = k / n
            p["outliers"] = outlier_test(k, n, ref.stats["outlier_count"], ref.stats["n"])
        fam = family_p(p)
        return {"n": n, "tested": True, "drift": bool(fam < self.config.alpha), "p_value": fam,
                "p_values": p, **out, "predicted_counts": counts.tolist(),
                **accuracy_estimates(probs, ref)}


def accuracy_estimates(probs: np.ndarray, ref: Reference) -> dict:
    """Label-free accuracy of a window: confidence (mean max probability) and ATC, each
    with its standard error; `estimated_accuracy` is ATC's."""
    n = len(probs)
    conf = probs.max(1)
    atc = float(np.mean(neg_entropy(probs) >= ref.stats["atc_threshold"]))
    se_conf = float(conf.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"estimated_accuracy": atc,
            "accuracy": {"atc": {"estimate": atc, "se": math.sqrt(atc * (1 - atc) / n)},
                         "confidence": {"estimate": float(conf.mean()), "se": se_conf}}}


def split_windows(records: Iterable[dict], config: MonitorConfig) -> Iterator[tuple[list, bool]]:
    """(records of one window, complete?) in time order; the last may be incomplete."""
    current: list[dict] = []
    for rec in records:
        if current and rec["t"] - current[0]["t"] > config.max_age_s:
            yield current, True  # closed by the time bound
            current = []
        current.append(rec)
        if len(current) >= config.window:
            yield current, True
            current = []
    if current:
        yield current, False


def window_arrays(records: list[dict]):
    """(probabilities, PCA projections or None, outlier scores or None) of the window's
    distinct images.

    An image seen twice in one window (a client retrying, a resent frame) would make the
    window look unlike the reference to MMD and KS by repetition alone; every test uses
    each sha256 once (records without a sha256 all count)."""
    seen: set = set()
    distinct = []
    for r in records:
        sha = r.get("sha256")
        if sha is None or sha not in seen:
            seen.add(sha)
            distinct.append(r)
    probs = np.array([r["probs"] for r in distinct], np.float64)
    proj = (np.array([r["proj"] for r in distinct], np.float64)
            if all(r.get("proj") is not None for r in distinct) else None)
    d2 = (np.array([r["d2"] for r in distinct], np.float64)
          if all(r.get("d2") is not None for r in distinct) else None)
    return probs, proj, d2


def analyse(records: Iterable[dict], ref: Reference, config: MonitorConfig = DEFAULT_CONFIG,
            tester: WindowTester | None = None, *, keep_records: bool = False) -> list[dict]:
    """Windows of a time-ordered record stream, tested, with the alert rule applied.

    Streams: only the window being filled is held in memory. A drifted window keeps its
    records (`"records"`, with keep_records) for the labelling queue; no other does."""
    tester = tester or WindowTester(ref, config)
    windows = []
    for i, (recs, complete) in enumerate(split_windows(records, config)):
        base = {"index": i, "start": recs[0]["t"], "end": recs[-1]["t"], "complete": complete}
        probs, proj, d2 = window_arrays(recs)
        if complete and len(probs) >= config.min_n:
            result = tester.test(probs, proj, d2, seed=config.seed * 1_000_003 + i)
        else:
            result = untested(len(probs))
        result["n"] = len(recs)
        result["n_distinct"] = len(probs)
        if keep_records and result["drift"]:
            result["records"] = recs
        windows.append({**base, **result})
    apply_alert_rule(windows, config)
    return windows


def untested(n: int) -> dict:
    return {"n": n, "tested": False, "drift": False, "p_value": None,
            "p_values": {"ks": None, "chi2": None, "mmd": None, "outliers": None},
            "mmd2": None, "outlier_share": None, "predicted_counts": None,
            "estimated_accuracy": None, "accuracy": None}


def apply_alert_rule(windows: list[dict], config: MonitorConfig) -> None:
    """Set `alert` (alert_k of the last alert_of windows drifted) and `alert_start` (the
    first window of an alert run) on each window, in place.

    >>> w = [{"drift": d} for d in (True, False, True, True, False, False, False)]
    >>> apply_alert_rule(w, MonitorConfig()); [x["alert"] for x in w]
    [False, False, True, True, True, False, False]
    """
    drifts = [bool(w["drift"]) for w in windows]
    before = False
    for i, w in enumerate(windows):
        recent = drifts[max(0, i - config.alert_of + 1):i + 1]
        w["alert"] = sum(recent) >= config.alert_k
        w["alert_start"] = w["alert"] and not before
        before = w["alert"]
