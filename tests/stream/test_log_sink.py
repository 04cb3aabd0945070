"""`sightwise watch ... --log DIR`: each processed frame becomes a prediction-log record in
the monitor's format (the same ONNX run as the frame's answer), closed events become event
records, and the live monitor tests the frames' windows like the server's: a camera is
monitored like `serve`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sw_stream_media import CLASS_A, CLASS_B, class_tiles, of_type, read_jsonl
from typer.testing import CliRunner

from sightwise.cli import app
from sightwise.core import sha256_bytes
from sightwise.monitor.log import read_records

W = 10


@pytest.fixture(scope="module")
def referenced(classifier, tmp_path_factory):
    """The classifier with its drift reference (what `sightwise train` writes)."""
    from sightwise.monitor.reference import build_reference

    dst = tmp_path_factory.mktemp("watch-log") / "bundle"
    shutil.copytree(classifier, dst)
    build_reference(dst, components=8, log=lambda _m: None)
    return dst


def test_frames_and_events_go_to_the_prediction_log_and_are_drift_tested(referenced, sw_base,
                                                                        tmp_path):
    from sightwise.bundle import load_bundle
    from sightwise.monitor.reference import load_reference
    from sightwise.runtime import Predictor
    from sightwise.stream.models import ClassifierModel

    tiles = class_tiles(sw_base, CLASS_A)[:20] + class_tiles(sw_base, CLASS_B)[:20]
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, tile in enumerate(tiles):
        tile.save(folder / f"f{i:03d}.png")
    out, log_dir = tmp_path / "events.jsonl", tmp_path / "log"
    res = CliRunner().invoke(app, ["watch", str(referenced), str(folder), "--fps", "5",
                                   "--out", str(out), "--log", str(log_dir), "--monitor-window",
                                   str(W), "--quiet", "--threads", "1"])
    assert res.exit_code == 0, res.stderr

    jsonl = read_jsonl(out)
    frames = of_type(jsonl, "frame")
    records = list(read_records(log_dir))
    logged = [r for r in records if "probs" in r]
    events = [r for r in records if r.get("type") == "event"]
    assert len(logged) == len(frames) == len(tiles)
    assert [e["label"] for e in events] == [e["label"] for e in of_type(jsonl, "event")] \
        == [CLASS_A, CLASS_B]
    bundle = load_bundle(referenced)
    ref = load_reference(bundle)
    version = f"local-{sha256_bytes((referenced / 'bundle.json').read_bytes())[:12]}"
    pred = Predictor(bundle, threads=1)
    plain = ClassifierModel(bundle, threads=1)  # not wrapped: the reference answer
    for i in (0, 25):  # one frame of each class
        rec, frame = logged[i], frames[i]
        image = tiles[i].convert("RGB")
        assert (rec["frame"], rec["stream_t"], rec["version"]) == (i, frame["t"], version)
        assert rec["sha256"] == sha256_bytes(image.tobytes())
        assert frame["top"] == plain.run(image).fields["top"]  # the one-pass wrapper agrees
        top = frame["top"][0]
        assert rec["probs"][bundle.classes.index(top["label"])] == pytest.approx(top["score"],
                                                                                abs=1e-6)
        np.testing.assert_allclose(rec["proj"], ref.project(pred.embed([image]))[0], rtol=1e-4,
                                   atol=1e-3)
    # Class-pure windows are a prior shift: the live monitor alerts and queues the frames.
    summary = of_type(jsonl, "summary")[-1]
    assert summary["prediction_log"]["written"] == len(records)
    assert summary["prediction_log"]["dropped"] == 0
    assert summary["prediction_log"]["alerts"] >= 1
    entries = [p for p in (log_dir / "labelling-queue").iterdir() if not p.name.startswith(".")]
    items = [json.loads(x) for x in (entries[0] / "items.jsonl").read_text().splitlines()]
    assert items and {it["sha256"] for it in items} <= {r["sha256"] for r in logged}

    report = CliRunner().invoke(app, ["monitor", "report", str(log_dir), "--bundle",
                                      str(referenced), "--window", str(W), "--json"])
    rep = json.loads(report.stdout)
    assert rep["n_records"] == len(tiles) and rep["skipped"]["other_records"] == 2
