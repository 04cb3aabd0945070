"""With a bundle: the model's view of the pool is the runtime's, torch-free; the audit runs
on its ONNX embeddings without torch; exports carry its predictions for Label Studio."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from sightwise.data.decode import decode_image
from sightwise.label.formats import read_label_studio
from sightwise.label.pool import read_pool
from sightwise.label.suggest import model_view
from sightwise.runtime import Predictor
from sightwise.serve.swap import local_version


def test_the_model_view_is_what_the_runtime_answers(exported, texture_pool):
    bundle = exported[0]
    pool = read_pool(texture_pool)
    view = model_view(bundle, pool, batch_size=5, progress=False)
    pred = Predictor(bundle)
    images = [decode_image(it.path) for it in pool.items]
    np.testing.assert_allclose(view.probs, pred.probabilities(images), atol=1e-5)
    np.testing.assert_allclose(view.emb, pred.embed(images), atol=1e-4)
    assert view.version == local_version(bundle) and view.classes == pred.classes


BLOCKED = """
import importlib.abc, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision", "timm")):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, NoTorch())
from sightwise.label.audit import run_audit
r = run_audit(sys.argv[1], bundle=sys.argv[2], folds=3, progress=False, log=lambda m: None)
print(json.dumps(r["summary"]))
"""


def test_audit_with_a_bundle_needs_no_torch(exported, sw_base):
    res = subprocess.run([sys.executable, "-c", BLOCKED, str(sw_base / "data"), str(exported[0])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["features"].startswith("bundle ") and summary["images"] == 144
    assert summary["oof_accuracy"] > 0.9  # the textures are easy on the bundle's embeddings


def test_export_for_label_studio_carries_the_models_predictions(exported, texture_pool, tmp_path):
    from sightwise.cli import app

    out = tmp_path / "tasks.json"
    res = CliRunner().invoke(app, ["data", "export", str(texture_pool), "--unlabelled",
                                   "--format", "label-studio", "--bundle", str(exported[0]),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    tasks = json.loads(out.read_text())
    pred = Predictor(exported[0]).predict_paths(sorted(texture_pool.glob("*.png")), top_k=1)
    assert len(tasks) == len(pred) == 12
    for task, p in zip(tasks, pred, strict=True):
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == local_version(exported[0])
        assert prediction["result"][0]["value"]["choices"] == [p.top[0].label]
        assert prediction["score"] == pytest.approx(p.top[0].probability, abs=1e-6)
        assert task["annotations"] == []
    back = read_label_studio(out, read_pool(texture_pool))
    assert [r.suggested for r in back] == [p.top[0].label for p in pred]
    assert (tmp_path / "tasks.config.xml").read_text().count("<Choice ") == 6


def test_audit_of_a_manifest_outside_its_folder_needs_allow_outside(exported, sw_base, tmp_path):
    """The pipeline audits its merged manifest, which names the dataset's files from another
    folder: refused by default (as `train`), and with allow_outside the same audit as the
    folder's own."""
    from sightwise.data.datasets import load_dataset
    from sightwise.errors import DataError
    from sightwise.label.audit import run_audit

    data = sw_base / "data"
    ds = load_dataset(data)
    manifest = tmp_path / "elsewhere" / "manifest.csv"
    manifest.parent.mkdir()
    lines = ["path,label"] + [f"{s.source},{ds.classes[s.label]}" for s in ds.samples]
    manifest.write_text("\n".join(lines) + "\n")
    quiet = dict(bundle=str(exported[0]), folds=3, progress=False, log=lambda _m: None)
    with pytest.raises(DataError, match="outside"):
        run_audit(str(manifest), **quiet)
    got = run_audit(str(manifest), allow_outside=True, **quiet)
    want = run_audit(str(data), **quiet)
    assert got["summary"]["images"] == want["summary"]["images"] == len(ds.samples)
    assert got["summary"]["suspects"] == want["summary"]["suspects"]
