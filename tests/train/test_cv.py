"""Cross-validation: folds disjoint, stratified and never the test split; out-of-fold
predictions from models that never saw the fold; the k-fold estimate by hand; `--cv K`."""

import csv
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from typer.testing import CliRunner

from sightwise.bundle import load_bundle
from sightwise.cli import app
from sightwise.predict import predict_files
from sightwise.train.cv import kfold_estimate, nontest_indices, probe_oof, stratified_folds


def test_folds_are_disjoint_stratified_and_cover_everything():
    y = np.repeat([0, 1, 2], [10, 7, 3])
    folds = stratified_folds(y, 3, seed=4)
    together = np.concatenate(folds)
    assert len(together) == len(y) and set(together.tolist()) == set(range(len(y)))  # disjoint
    per_fold = [sorted(Counter(y[f].tolist()).items()) for f in folds]
    for c, n in ((0, 10), (1, 7), (2, 3)):  # each class split as evenly as its count allows
        counts = sorted(dict(p).get(c, 0) for p in per_fold)
        assert sum(counts) == n and counts[-1] - counts[0] <= 1
    # seeded: the same seed gives the same folds, another seed others
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(y, 3, seed=4),
                                                    strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(y, 3, seed=5),
                                                        strict=True))


def test_the_test_split_is_in_no_fold():
    cache = SimpleNamespace(splits=np.array(["train", "test", "val", "train", "test", "val"]))
    assert nontest_indices(cache).tolist() == [0, 2, 3, 5]


def test_kfold_estimate_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    pred = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 0])  # wrong at 1, 5, 9
    folds = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6, 7, 8, 9])]
    est = kfold_estimate(y, np.eye(2)[pred], folds, seed=0, candidate="linear-probe")
    assert est["k"] == 3 and est["n"] == 10 and est["fold_sizes"] == [3, 3, 4]
    assert est["accuracy"] == pytest.approx(7 / 10)
    assert est["fold_accuracy"] == pytest.approx([2 / 3, 2 / 3, 3 / 4])
    # class 0: TP 3 (0, 4, 7), FP 2 (5, 9), FN 1 (1) -> F1 6/9; class 1: TP 4, FP 1, FN 2 -> 8/11
    assert est["macro_f1"] == pytest.approx((6 / 9 + 8 / 11) / 2)
    lo, hi = est["accuracy_ci"]
    assert lo < 0.7 < hi and hi - lo > 0.2  # ten images: a wide interval


@pytest.mark.parametrize("Cs", [(0.1,), (0.03, 0.3, 1.0)])
def test_a_fold_is_predicted_by_probes_that_never_saw_its_labels(Cs):
    """Scrambling fold j's labels leaves fold j's out-of-fold logits unchanged (they come
    from probes fitted, and their C chosen, on other folds) and moves other folds'."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(0, 1, (60, 8)) + np.eye(3, 8)[y] * 2
    folds = stratified_folds(y, 4, seed=0)
    logits, chosen = probe_oof(x, y, folds, 3, Cs=Cs)
    assert len(chosen) == 4 and set(chosen) <= set(Cs)
    scrambled = y.copy()
    scrambled[folds[1]] = (y[folds[1]] + 1) % 3
    again, _ = probe_oof(x, scrambled, folds, 3, Cs=Cs)
    np.testing.assert_allclose(again[folds[1]], logits[folds[1]], atol=1e-5)
    assert not np.allclose(again[folds[2]], logits[folds[2]], atol=1e-3)  # trained on fold 1


def _rows(run, split):
    with open(run / "manifest.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_train_cv_reports_a_kfold_estimate_beside_the_test_split(tmp_path, image_folder_factory):
    data = image_folder_factory(tmp_path / "data", {"a": 12, "b": 12, "c": 12})
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--no-progress",
                                   "--strategy", "linear-probe", "--img-size", "32", "--cv", "3"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    kfold = m["kfold"]
    nontest = len(_rows(out, "train")) + len(_rows(out, "val"))
    assert kfold["k"] == 3 and kfold["n"] == nontest == sum(kfold["fold_sizes"])
    assert m["choices"]["cv"]["fold_sizes"] == kfold["fold_sizes"]
    assert m["val"] == {"n": nontest, "accuracy": kfold["accuracy"],
                        "split": "out-of-fold (train+val)"}
    probe = m["strategy"]["candidates"]["linear-probe"]
    top = Counter(probe["fold_C"]).most_common()
    assert probe["C"] == min(c for c, n in top if n == top[0][1])  # the folds' most common C
    assert "3-fold (train+val, n=" in res.output
    assert "k-fold estimate (3 folds over the train and validation splits" in (
        out / "report.html").read_text()
    # the final model is what the bundle predicts, and what the test metrics describe
    test = _rows(out, "test")
    preds = predict_files(str(out / "bundle"), [str(data / r["path"]) for r in test], top_k=1)
    assert m["test"]["accuracy"] == pytest.approx(
        accuracy_score([r["label"] for r in test], [p.label for p in preds]), abs=1e-9)
    # 6 test images: the summary and the report say the split cannot carry small differences
    assert "warning: the test split is small (n=6)" in res.output
    assert "the 3-fold estimate over n=30" in m["warnings"][0]


def test_train_cv_fine_tuning_averages_the_fold_models(tmp_path, image_folder_factory):
    data = image_folder_factory(tmp_path / "data", {"a": 8, "b": 8})
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--no-progress",
                                   "--strategy", "scratch", "--epochs", "1", "--img-size", "32",
                                   "--cv", "3", "--no-tta"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["kfold"]["candidate"] == "scratch" and m["choices"]["members"]["value"] == 3
    assert load_bundle(out / "bundle").meta.raw["model"]["members"] == 3
    assert [x["seed"] for x in m["strategy"]["candidates"]["scratch"]["members"]] == [0, 1, 2]


def test_cv_needs_three_folds(tmp_path, image_folder_factory):
    data = image_folder_factory(tmp_path / "data", {"a": 6, "b": 6})
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "run"),
                                   "--cv", "2", "--img-size", "32"])
    assert res.exit_code == 2 and "--cv" in res.output
