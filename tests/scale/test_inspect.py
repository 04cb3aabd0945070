"""`inspect score` streamed: the same files, scores, verdicts and overlays as the reference
`score_folder`, and an unreadable image recorded with its error."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sightwise.anomaly.detector import Detector
from sightwise.anomaly.scoring import score_folder
from sightwise.scale.inspect import score_stream


def test_stream_equals_score_folder(detector, tmp_path):
    det_dir, data = detector
    images = tmp_path / "images"
    shutil.copytree(data["test_good"], images / "good")
    shutil.copytree(data["defect"], images / "defect")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    det = Detector(det_dir, threads=1)
    ref = {r["path"]: r for r in score_folder(det, images, tmp_path / "ref")}
    counts = score_stream(det, images, tmp_path / "got", batch_size=4, progress=False)
    with open(tmp_path / "got" / "scores.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["path"] for r in got] == sorted(ref)  # path order, as score_folder sorts
    for row in got:
        want = ref[row["path"]]
        if want["error"]:
            assert row["error"] and not row["score"] and not row["overlay"]
            continue
        assert float(row["score"]) == pytest.approx(want["score"], rel=1e-4)  # float32 noise
        assert row["verdict"] == want["verdict"] and row["overlay"] == want["overlay"]
        # Another batch composition moves the last float bits, and a colour-map step can
        # turn that into a few levels on a pixel: the same picture, not the same bytes.
        a, b = (np.asarray(Image.open(tmp_path / d / row["overlay"]), np.int16)
                for d in ("got", "ref"))
        assert a.shape == b.shape and np.abs(a - b).max() <= 8 and np.abs(a - b).mean() < 0.05
    summary = json.loads((tmp_path / "got" / "scores.json").read_text())
    reference = json.loads((tmp_path / "ref" / "scores.json").read_text())
    assert {k: summary[k] for k in ("threshold", "n", "n_defect", "n_error")} == \
        {k: reference[k] for k in ("threshold", "n", "n_defect", "n_error")}
    assert counts == {"n": 13, "n_defect": reference["n_defect"], "n_error": 1}
    assert [r["path"] for r in summary["images"]] == [r["path"] for r in reference["images"]]
