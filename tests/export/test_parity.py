"""The parity gate: numbers against a hand computation and scipy, the recorded files, and
what a failing gate does to the bundle."""

import json
import shutil

import numpy as np
import pytest
import scipy.special

from sightwise.bundle import load_bundle, sha256_path
from sightwise.errors import BundleError, SightwiseError
from sightwise.export.api import export_bundle
from sightwise.export.parity import Gate, ParityError, compare, gate_checks, parity_report


def test_compare_against_scipy_and_a_hand_count():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4))
    noisy = ref + rng.normal(scale=0.5, size=ref.shape)
    labels = rng.integers(0, 4, size=50)
    got = compare(ref, noisy, labels, temperature=0.7)
    p_ref = scipy.special.softmax(ref / 0.7, axis=1)
    p = scipy.special.softmax(noisy / 0.7, axis=1)
    assert got["accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels))
    assert got["agreement"] == pytest.approx(np.mean(p.argmax(1) == p_ref.argmax(1)))
    assert got["max_abs_dprob"] == pytest.approx(np.abs(p - p_ref).max())


def _report(fp32_agree=1.0, dprob=1e-5, int8_acc=0.9, int8_agree=1.0, n=1000):
    return {"n": n, "torch": {"accuracy": 0.9},
            "fp32": {"accuracy": 0.9, "agreement": fp32_agree, "max_abs_dprob": dprob},
            "int8": {"accuracy": int8_acc, "agreement": int8_agree, "max_abs_dprob": 0.01}}


@pytest.mark.parametrize("kwargs, name, words", [
    ({"fp32_agree": 0.995}, "fp32 top-1 agreement", "short by 0.40 points; 5 of 1000"),
    ({"dprob": 3e-3}, "fp32 max |probability difference|", "3.0x the limit"),
    ({"int8_acc": 0.89}, "int8 accuracy drop", "a drop of 1.00 points"),
    ({"int8_agree": 0.985}, "int8 top-1 agreement", "short by 0.50 points; 15 of 1000"),
])
def test_each_check_fails_alone_and_says_by_how_much(kwargs, name, words):
    checks = gate_checks(_report(**kwargs))
    failed = [c for c in checks if not c["passed"]]
    assert [c["name"] for c in failed] == [next(c["name"] for c in checks if c["name"].startswith(name))]
    assert words in failed[0]["message"]


def test_boundaries_pass():
    g = Gate()
    checks = gate_checks(_report(fp32_agree=g.fp32_min_agreement, dprob=g.fp32_max_abs_dprob,
                                 int8_acc=0.9 - g.int8_max_accuracy_drop,
                                 int8_agree=g.int8_min_agreement))
    assert all(c["passed"] for c in checks)


def test_report_without_int8_has_null_int8_and_no_int8_checks():
    logits = np.eye(3)
    r = parity_report(np.arange(3), logits, logits, None, 1.0, split="test")
    assert r["int8"] is None and r["passed"]
    assert not any(c["name"].startswith("int8") for c in r["checks"])


def test_parity_json_contract_and_bundle_listing(exported):
    bundle = load_bundle(exported[0])  # verifies every sha256
    report = json.loads(bundle.file("parity.json").read_text())
    assert report["passed"] is True and report["split"] == "test"
    assert report["n"] == bundle.meta.raw["metrics"]["test"]["n"]
    assert report["torch"]["accuracy"] == pytest.approx(bundle.meta.raw["metrics"]["test"]["accuracy"])
    assert set(report["fp32"]) >= {"accuracy", "agreement", "max_abs_dprob"}
    assert set(report["int8"]) >= {"accuracy", "agreement", "max_abs_dprob", "size_ratio"}
    assert report["int8"]["size_ratio"] > 3.0  # int8 weights, a quarter of the bytes
    for name in ("model.onnx", "model.int8.onnx", "head.npz", "parity.json"):
        assert bundle.meta.raw["files"][name]["sha256"] == sha256_path(bundle.path / name)
    export = bundle.meta.raw["export"]
    assert export["parity_passed"] is True and export["forced"] is False
    assert export["parity"]["int8"] == report["int8"]
    assert export["calibration"]["source"] == "train split of manifest.csv"
    assert not [p for p in bundle.path.iterdir() if p.name.startswith(".")]  # no staging left


IMPOSSIBLE = Gate(fp32_min_agreement=1.01)  # agreement above 100 %: nothing passes


def test_failing_gate_raises_marks_the_bundle_and_the_runtime_refuses(
        trained_bundle, tmp_path):
    from sightwise.runtime import Predictor

    b = shutil.copytree(trained_bundle, tmp_path / "b")
    with pytest.raises(ParityError) as err:
        export_bundle(b, edge_dir=tmp_path / "edge", gate=IMPOSSIBLE, log=lambda _m: None)
    assert isinstance(err.value, SightwiseError)
    assert "fp32 top-1 agreement with PyTorch is 100.00%, below the required 101.00%" in str(err.value)
    meta = load_bundle(b).meta.raw  # still a valid bundle, now marked
    assert meta["export"]["parity_passed"] is False and meta["export"]["forced"] is False
    assert not (tmp_path / "edge").exists()  # nothing shipped
    with pytest.raises(BundleError, match="failed its parity gate"):
        Predictor(b)

    report = export_bundle(b, force=True, gate=IMPOSSIBLE, log=lambda _m: None)
    assert report["passed"] is False
    meta = load_bundle(b).meta.raw
    assert meta["export"]["parity_passed"] is False and meta["export"]["forced"] is True
    assert Predictor(b).predict_images([]) == []


def test_reexport_without_int8_drops_the_stale_int8_graph(exported, tmp_path):
    b = shutil.copytree(exported[0], tmp_path / "b")
    report = export_bundle(b, log=lambda _m: None)
    bundle = load_bundle(b)
    assert report["int8"] is None and not (b / "model.int8.onnx").exists()
    assert "model.int8.onnx" not in bundle.meta.raw["files"]
    assert bundle.meta.raw["export"]["int8_passed"] is None
