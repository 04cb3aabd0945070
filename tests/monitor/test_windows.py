"""Windows over synthetic streams: the clean false-alarm rate, a detected shift, the alert
rule, the time bound, duplicates, and the label-free accuracy estimates."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.monitor.stats import wilson_interval
from sightwise.monitor.windows import (
    MonitorConfig,
    WindowTester,
    accuracy_estimates,
    analyse,
    split_windows,
)

FAST = MonitorConfig(window=60, min_n=20, permutations=400)


def test_clean_stream_false_alarm_rate_is_within_its_binomial_interval(synth):
    """Fresh clean windows flag about alpha = 0.05 of the time or less. The guarantee is
    over the reference's sampling too (each statistic of a 200-image reference is itself an
    estimate), so the windows come from 30 references, 8 each."""
    cfg = MonitorConfig(window=60, alpha=0.05, permutations=200)
    rng = np.random.default_rng(10)
    flags = []
    for r in range(30):
        tester = WindowTester(synth.reference(200, seed=1000 + r), cfg)
        for i in range(8):
            probs, proj, d2, _ = synth.window(tester.ref, 60, rng)
            flags.append(tester.test(probs, proj, d2, seed=i)["drift"])
    lo, _ = wilson_interval(sum(flags), len(flags))
    assert lo <= cfg.alpha, f"{sum(flags)} of {len(flags)} clean windows flagged"
    assert sum(flags) < len(flags) * cfg.alpha * 3


def test_an_injected_shift_is_detected_and_alerts_after_two_windows(synth):
    ref = synth.reference(300)
    rng = np.random.default_rng(11)
    clean = synth.records(ref, 5 * 60, rng)
    shifted = synth.records(ref, 4 * 60, rng, t0=clean[-1]["t"] + 1, shift=3.0)
    windows = analyse(clean + shifted, ref, FAST)
    assert [w["index"] for w in windows] == list(range(9))
    assert not any(w["alert"] for w in windows[:5])
    assert all(w["drift"] for w in windows[5:])
    assert [w["alert"] for w in windows[5:]] == [False, True, True, True]
    assert [w["alert_start"] for w in windows[5:]] == [False, True, False, False]
    assert all(w["p_values"]["mmd"] < 0.01 for w in windows[5:])
    assert all(w["outlier_share"] > 0.2 for w in windows[5:])


def test_prior_shift_moves_the_class_counts_test(synth):
    ref = synth.reference(300)
    rng = np.random.default_rng(12)
    probs, proj, d2, _ = synth.window(ref, 200, rng, prior=[0.8, 0.1, 0.1])
    res = WindowTester(ref, FAST).test(probs, proj, d2)
    assert res["p_values"]["chi2"] < 1e-4 and res["drift"]


def test_time_bound_closes_a_slow_window_and_small_ones_are_not_tested(synth):
    ref = synth.reference(100)
    rng = np.random.default_rng(13)
    recs = synth.records(ref, 130, rng, dt=60.0)  # one a minute: 30 per max_age of 30 min
    cfg = MonitorConfig(window=100, max_age_s=1800, min_n=25, permutations=100)
    chunks = list(split_windows(recs, cfg))
    assert [len(c) for c, _ in chunks] == [31, 31, 31, 31, 6]
    assert [done for _, done in chunks] == [True] * 4 + [False]
    windows = analyse(recs, ref, cfg)
    assert [w["tested"] for w in windows] == [True] * 4 + [False]
    assert windows[-1]["p_value"] is None and windows[-1]["drift"] is False


def test_a_repeated_image_counts_once_in_the_tests(synth):
    ref = synth.reference(200)
    rng = np.random.default_rng(14)
    recs = synth.records(ref, 60, rng)
    repeated = [dict(recs[0], t=recs[0]["t"] + i * 1e-3) for i in range(60)]
    windows = analyse(sorted(recs + repeated, key=lambda r: r["t"]), ref,
                      MonitorConfig(window=120, min_n=20, permutations=100))
    assert windows[0]["n"] == 120 and windows[0]["n_distinct"] == 60
    assert not windows[0]["drift"]


def test_label_free_accuracy_estimates_by_hand(synth):
    ref = synth.reference(100)
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1], [1 / 3] * 3])
    est = accuracy_estimates(probs, ref)
    conf = probs.max(1)
    assert est["accuracy"]["confidence"]["estimate"] == pytest.approx(conf.mean())
    assert est["accuracy"]["confidence"]["se"] == pytest.approx(conf.std(ddof=1) / 2)
    p = np.clip(probs, 1e-12, 1)
    atc = np.mean(np.sum(p * np.log(p), 1) >= ref.stats["atc_threshold"])
    assert est["estimated_accuracy"] == est["accuracy"]["atc"]["estimate"] == pytest.approx(atc)


def test_atc_tracks_true_accuracy_under_shift(synth):
    """On the synthetic law, ATC's estimate follows the true accuracy as the shift grows."""
    ref = synth.reference(400)
    rng = np.random.default_rng(15)
    for shift in (0.0, 1.0, 2.0):
        probs, _, labels = synth.outputs(3000, rng, shift=shift)
        true = np.mean(probs.argmax(1) == labels)
        assert accuracy_estimates(probs, ref)["estimated_accuracy"] == pytest.approx(true, abs=0.06)


def test_config_is_checked():
    with pytest.raises(ValueError):
        MonitorConfig(window=10, min_n=20)
    with pytest.raises(ValueError):
        MonitorConfig(alpha=0)
