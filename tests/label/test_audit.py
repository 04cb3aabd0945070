"""The data audit: its pieces against references, the CLI's JSON contract end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from sightwise.label.audit import (
    audit_features,
    audit_hint,
    near_duplicates,
    oof_probabilities,
    outlier_scores,
)
from sightwise.label.features import Features
from sightwise.label.order import centred_unit
from sightwise.types import Sample


def blobs(n_per=40, classes=3, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, dim))
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + rng.normal(0, 1, (len(y), dim)), y


def test_out_of_fold_probabilities_never_see_their_own_label():
    x, y = blobs()
    noisy = y.copy()
    noisy[:5] = 1  # five class-0 points labelled 1
    probs, k = oof_probabilities(x, noisy, 3, folds=5)
    assert k == 5 and probs.shape == (120, 3) and np.allclose(probs.sum(1), 1)
    # Trained on the other folds, the model still says class 0 for the relabelled points.
    assert (probs[:5].argmax(1) == 0).all()


def test_audit_features_finds_flipped_labels_most_suspicious_first():
    x, y = blobs()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 6, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 3
    samples = [Sample(f"/data/img_{i:03d}.png", int(c), "train" if i % 4 else "test", f"h{i}")
               for i, c in enumerate(noisy)]
    result = audit_features(Features(x.astype(np.float32), samples, [], "test"), ["a", "b", "c"])
    paths = [s["path"] for s in result["suspects"]]
    assert set(paths) == {f"/data/img_{i:03d}.png" for i in flipped}
    assert all(set(s) == {"path", "given", "suggested", "score"} for s in result["suspects"])
    scores = [s["score"] for s in result["suspects"]]
    assert scores == sorted(scores, reverse=True)
    for s in result["suspects"]:
        i = int(s["path"][-7:-4])
        assert (s["given"], s["suggested"]) == ("abc"[noisy[i]], "abc"[y[i]])
    assert result["summary"]["suspect_share"] == pytest.approx(6 / 120)


def test_near_duplicates_with_different_labels_and_across_splits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8))
    x[1] = x[0] + 1e-4  # a near-copy with another label, same split
    x[3] = x[2] + 1e-4  # a near-copy with the same label, other split
    samples = [Sample("a", 0, "train", "1"), Sample("b", 1, "train", "2"),
               Sample("c", 0, "train", "3"), Sample("d", 0, "test", "4"),
               Sample("e", 0, "train", "same"), Sample("f", 1, "val", "same")]  # identical bytes
    conflicts, leakage = near_duplicates(centred_unit(x), samples, ["ok", "bad"], 0.99)
    assert {(p["a"]["path"], p["b"]["path"]) for p in conflicts} == {("a", "b"), ("e", "f")}
    assert {(p["a"]["path"], p["b"]["path"]) for p in leakage} == {("c", "d"), ("e", "f")}
    assert conflicts[0]["similarity"] == 1.0


def test_outlier_scores_single_out_a_far_point():
    x, _ = blobs(n_per=30)
    x[7] = 50.0
    z = outlier_scores(centred_unit(x))
    assert int(np.argmax(z)) == 7 and z[7] > 6 and (np.delete(z, 7) < 6).all()


def test_audit_hint_speaks_only_above_the_share():
    x, y = blobs(n_per=50)
    assert audit_hint(x, y, 3) is None
    noisy = y.copy()
    noisy[::10] = (noisy[::10] + 1) % 3  # 10 % wrong
    hint = audit_hint(x, noisy, 3, data="parts/")
    assert hint.startswith("audit: ") and "sightwise data audit parts/" in hint


def test_cli_audit_json_contract_and_html(tmp_path, image_folder_factory):
    """`sightwise data audit DATA --json` on real pixels (the frozen ImageNet backbone): an
    image moved into the wrong class folder and a copy filed under another class are the
    two top suspects; the copy is also named as a conflicting duplicate with both paths."""
    from sightwise.cli import app

    data = image_folder_factory(tmp_path / "data", {"red": 10, "green": 10, "blue": 10}, size=32)
    shutil.move(data / "red" / "red_003.png", data / "blue" / "red_003.png")
    shutil.copy(data / "green" / "green_001.png", data / "red" / "copy_of_green.png")
    (data / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    res = CliRunner().invoke(app, ["data", "audit", str(data), "--json", "--folds", "3",
                                   "--html", str(tmp_path / "audit.html")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    top = {"/".join(s["path"].split("/")[-2:]): (s["given"], s["suggested"])
           for s in out["suspects"][:2]}
    assert top == {"blue/red_003.png": ("blue", "red"), "red/copy_of_green.png": ("red", "green")}
    assert len(out["suspects"]) <= 3
    pairs = {frozenset("/".join(p[k]["path"].split("/")[-2:]) for k in "ab")
             for p in out["conflicting_duplicates"]}
    assert frozenset(("green/green_001.png", "red/copy_of_green.png")) in pairs
    assert out["skipped"][0]["path"].endswith("broken.png")
    assert out["class_balance"]["counts"] == {"blue": 11, "green": 10, "red": 10}
    assert "Probable label errors" in (tmp_path / "audit.html").read_text()


def test_cli_audit_user_errors(tmp_path):
    from sightwise.cli import app

    res = CliRunner().invoke(app, ["data", "audit", str(tmp_path / "nope"), "--json"])
    assert res.exit_code == 2 and "dataset not found" in res.output


def test_a_class_of_one_image_does_not_shrink_the_folds():
    x, y = blobs(n_per=20)
    y = np.append(y, 3)  # a fourth class with a single image
    x = np.vstack([x, x[:1] + 0.01])
    probs, k = oof_probabilities(x, y, 4, folds=5)
    assert k == 5  # the other classes keep five folds
    assert probs[-1].argmax() != 3  # its only image was judged by models that never saw it
