"""End to end on the session's exported bundle: a log written through MonitorLog (the hook
serve and predict call), the live monitor's alert, the labelling queue, the webhook, and
`sightwise monitor report` (the Contract JSON, the table, the HTML page)."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sightwise.core import sha256_bytes
from sightwise.monitor.live import MonitorLog
from sightwise.monitor.report import drift_plot_png, monitor_report, prometheus_gauges
from sightwise.monitor.windows import MonitorConfig

W = 20
CONFIG = MonitorConfig(window=W, min_n=10, permutations=500)


@pytest.fixture(scope="module")
def webhook():
    """A local server on 127.0.0.1 that records the JSON bodies POSTed to it."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()
    thread.join(10)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stream_log(ref_bundle, tmp_path_factory, webhook):
    """One clean window (the test split) then three windows of noise-corrupted images,
    logged with images kept, through the same calls the server makes."""
    from sightwise.bundle import load_bundle
    from sightwise.data.decode import decode_image
    from sightwise.export.manifest import bundle_samples
    from sightwise.monitor.reference import run_outputs
    from sightwise.runtime import Predictor

    bundle = load_bundle(ref_bundle)
    pred = Predictor(bundle, threads=1)
    rng = np.random.default_rng(0)
    clean = [np.asarray(decode_image(s.source).convert("RGB"))
             for s in bundle_samples(bundle, "test")][:W]
    others = [np.asarray(decode_image(s.source).convert("RGB"))
              for s in bundle_samples(bundle, "train")][:3 * W]
    noisy = [np.clip(a + rng.normal(0, 90, a.shape), 0, 255).astype(np.uint8) for a in others]
    log_dir = tmp_path_factory.mktemp("monitor-log") / "log"
    url, _ = webhook
    mlog = MonitorLog(log_dir, keep_images=True, config=CONFIG, webhook=url)
    for batch in (clean, noisy[:W], noisy[W:2 * W], noisy[2 * W:]):
        pngs = [_png(a) for a in batch]
        resized = np.stack([np.asarray(Image.fromarray(a).resize(
            (pred.preprocessing.size,) * 2, Image.BICUBIC)) for a in batch])
        probs, emb = run_outputs(pred, resized)
        assert mlog.observe(bundle=bundle, model="textures", version="3", probs=probs,
                            embeddings=emb, sha256s=[sha256_bytes(b) for b in pngs],
                            latencies_ms=np.full(len(batch), 4.0), images=pngs) == len(batch)
        mlog.log.flush()
    yield log_dir, mlog
    mlog.close()


def test_live_monitor_alerts_queues_and_calls_the_webhook(stream_log, webhook):
    log_dir, mlog = stream_log
    summary = mlog.summary()
    drift = [w["drift"] for w in summary["windows"]]
    assert len(drift) == 4 and drift[1:] == [True, True, True]
    assert [w["alert"] for w in summary["windows"]] == [False, False, True, True]
    assert summary["alerts"] == 1 and summary["log"]["dropped"] == 0
    gauges = mlog.gauges()
    assert gauges["sightwise_monitor_alert"] == 1.0
    assert gauges["sightwise_monitor_p_value"] < 0.01
    assert gauges["sightwise_monitor_log_dropped_total"] == 0.0
    entries = sorted((log_dir / "labelling-queue").iterdir())
    assert entries and not any(e.name.startswith(".") for e in entries)
    event = json.loads((entries[0] / "alert.json").read_text())
    items = [json.loads(x) for x in (entries[0] / "items.jsonl").read_text().splitlines()]
    assert event["model"] == "textures" and event["version"] == "3"
    assert len(items) == event["n_items"] >= W
    assert [i["confidence"] for i in items] == sorted(i["confidence"] for i in items)
    for it in items:
        assert sha256_bytes((entries[0] / it["image"]).read_bytes()) == it["sha256"]
    _, got = webhook
    assert any(e["event"] == "sightwise.drift_alert" and e["model"] == "textures"
               for e in got)


def test_report_json_contract_from_the_cli(stream_log, ref_bundle, tmp_path):
    from sightwise.cli import app

    log_dir, _ = stream_log
    html = tmp_path / "report.html"
    queue = tmp_path / "queue"
    res = CliRunner().invoke(app, ["monitor", "report", str(log_dir), "--bundle",
                                   str(ref_bundle), "--window", str(W), "--json",
                                   "--html", str(html), "--queue", str(queue),
                                   "--alert-webhook", "http://127.0.0.1:9/closed"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    windows = rep["windows"]
    assert [w["index"] for w in windows] == [0, 1, 2, 3]
    assert [w["start"] for w in windows] == sorted(w["start"] for w in windows)
    for w in windows:
        assert {"index", "n", "drift", "alert", "p_value", "estimated_accuracy"} <= set(w)
        assert isinstance(w["drift"], bool) and isinstance(w["alert"], bool)
        assert w["n"] == W and 0 <= w["p_value"] <= 1 and 0 <= w["estimated_accuracy"] <= 1
    assert [w["drift"] for w in windows][1:] == [True, True, True]
    assert rep["alerts"] == 1 and rep["n_records"] == 4 * W
    text = html.read_text()
    assert "data:image/png;base64," in text and "ALERT" in text
    assert len(list(queue.iterdir())) == 2  # one folder per alerted window
    # Run again: existing queue folders are left alone, not duplicated.
    again = monitor_report(log_dir, ref_bundle, config=CONFIG, queue_dir=queue,
                           log=lambda _m: None)
    assert again["queued"] == [] and len(list(queue.iterdir())) == 2


def test_report_table_and_records_of_another_model_are_skipped(stream_log, ref_bundle):
    from sightwise.cli import app
    from sightwise.monitor.log import PredictionLog

    log_dir, _ = stream_log
    with PredictionLog(log_dir) as other:
        other.append({"t": 1.0, "ref": "someoneelse00000", "probs": [1.0], "sha256": "x"})
    rep = monitor_report(log_dir, ref_bundle, config=CONFIG, log=lambda _m: None)
    assert rep["skipped"]["other_reference"] == 1 and rep["n_records"] == 4 * W
    res = CliRunner().invoke(app, ["monitor", "report", str(log_dir), "--bundle",
                                   str(ref_bundle), "--window", str(W)])
    assert res.exit_code == 0 and "DRIFT" in res.stdout and "1 alert(s)" in res.stdout


def test_monitor_reference_cli_and_its_errors(exported, tmp_path):
    import shutil

    from sightwise.bundle import load_bundle
    from sightwise.cli import app

    copy = tmp_path / "b"
    shutil.copytree(exported[0], copy)
    res = CliRunner().invoke(app, ["monitor", "reference", str(copy), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "reference.npz" in load_bundle(copy).meta.files
    res = CliRunner().invoke(app, ["monitor", "report", str(tmp_path / "nolog"),
                                   "--bundle", str(copy)])
    assert res.exit_code == 2 and "no prediction log folder" in res.output


def test_gauges_without_windows_are_nan_not_missing():
    g = prometheus_gauges({"windows": [], "alerts": 0})
    assert math.isnan(g["sightwise_monitor_p_value"]) and g["sightwise_monitor_alerts_total"] == 0
    assert all(k.startswith("sightwise_monitor_") for k in g)


def test_drift_plot_is_a_png(stream_log, ref_bundle):
    rep = monitor_report(stream_log[0], ref_bundle, config=CONFIG, log=lambda _m: None)
    png = drift_plot_png(rep)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 400


def test_observe_without_a_reference_still_logs(exported, tmp_path):
    with MonitorLog(tmp_path / "log") as mlog:
        n = mlog.observe(bundle=exported[0], model="m", version=1, probs=np.eye(6)[:2],
                         embeddings=np.zeros((2, 7)), sha256s=["a" * 64, "b" * 64])
        mlog.log.flush()
    from sightwise.monitor.log import read_records

    recs = list(read_records(tmp_path / "log"))
    assert n == 2 and [r["ref"] for r in recs] == [None, None] and recs[0]["proj"] is None


def test_predict_paths_logged_answers_like_the_predictor_and_logs(ref_bundle, tmp_path):
    from sightwise.export.manifest import bundle_samples
    from sightwise.monitor.hooks import predict_paths_logged
    from sightwise.monitor.log import read_records
    from sightwise.runtime import Predictor

    pred = Predictor(ref_bundle, threads=1, batch_size=4)
    paths = [s.source for s in bundle_samples(pred.bundle, "test")[:6]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths.insert(2, str(broken))
    with MonitorLog(tmp_path / "log", live=False, keep_images=True) as mlog:
        got = predict_paths_logged(pred, paths, mlog, model="textures", version=2, top_k=2)
        mlog.log.flush()
    want = pred.predict_paths(paths, top_k=2)
    assert [g.source for g in got] == [w.source for w in want]
    assert got[2].error and want[2].error
    for g, w in zip(got, want, strict=True):
        assert [c.label for c in g.top] == [c.label for c in w.top]
        assert [c.probability for c in g.top] == pytest.approx([c.probability for c in w.top],
                                                               abs=1e-6)
    recs = list(read_records(tmp_path / "log"))
    assert [r["source"] for r in recs] == [p for p in paths if p != str(broken)]
    for r in recs:
        assert r["sha256"] == sha256_bytes(Path(r["source"]).read_bytes())
        assert (tmp_path / "log" / r["img"]).is_file() and r["proj"] and r["d2"] is not None


def test_monitor_summary_reads_the_recent_log(stream_log, ref_bundle):
    from sightwise.monitor.report import monitor_summary

    log_dir, mlog = stream_log
    s = monitor_summary(log_dir, ref_bundle, config=CONFIG, hours=24, last=2,
                        log_status=mlog.log.status())
    assert [w["index"] for w in s["windows"]] == [2, 3] and s["alerts"] == 1
    assert s["gauges"]["sightwise_monitor_alert"] == 1.0
    assert s["gauges"]["sightwise_monitor_log_healthy"] == 1.0


def test_predict_log_appends_what_it_prints_and_the_report_reads_it(ref_bundle, tmp_path):
    """The contract: `sightwise predict BUNDLE FOLDER --log DIR` appends to the prediction
    log like the server does, and `monitor report DIR --bundle B --json` reads it."""
    from sightwise.cli import app
    from sightwise.export.manifest import bundle_samples
    from sightwise.monitor.log import read_records
    from sightwise.runtime import Predictor

    pred = Predictor(ref_bundle, threads=1)
    folder = tmp_path / "batch"
    folder.mkdir()
    for s in bundle_samples(pred.bundle, "test")[:5]:
        shutil.copy(s.source, folder / Path(s.source).name)
    (folder / "zz_broken.png").write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["predict", str(ref_bundle), str(folder), "--log",
                                   str(tmp_path / "log"), "--json", "--threads", "1"])
    assert res.exit_code == 1, res.output  # one file failed to decode: reported, exit 1
    printed = json.loads(res.stdout)
    answered = [p for p in printed if p["error"] is None]
    assert len(printed) == 6 and len(answered) == 5
    recs = list(read_records(tmp_path / "log"))
    assert [r["source"] for r in recs] == [p["image"] for p in answered]
    want = pred.predict_paths([p["image"] for p in answered], top_k=len(pred.classes))
    for r, w in zip(recs, want, strict=True):
        # named as `serve --bundle RUN/bundle` names it: the run folder, local-<sha>
        assert r["model"] == ref_bundle.parent.name and r["version"].startswith("local-")
        probs = dict(zip(pred.classes, r["probs"], strict=True))
        assert [probs[c.label] for c in w.top] == pytest.approx([c.probability for c in w.top],
                                                                abs=1e-5)
    res = CliRunner().invoke(app, ["monitor", "report", str(tmp_path / "log"), "--bundle",
                                   str(ref_bundle), "--window", "5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["windows"][0]["n"] == 5


def test_batch_predict_out_with_log_records_what_predict_log_records(ref_bundle, tmp_path):
    """`predict FOLDER --out preds.csv --log DIR` (the streamed batch engine) logs the same
    records as `predict FOLDER --log DIR` (one Predictor call per chunk)."""
    from sightwise.cli import app
    from sightwise.export.manifest import bundle_samples
    from sightwise.monitor.log import read_records
    from sightwise.runtime import Predictor

    folder = tmp_path / "batch"
    folder.mkdir()
    for s in bundle_samples(Predictor(ref_bundle, threads=1).bundle, "test")[:7]:
        shutil.copy(s.source, folder / Path(s.source).name)
    (folder / "broken.png").write_bytes(b"not an image")
    base = ["predict", str(ref_bundle), str(folder), "--threads", "1", "--batch-size", "3"]
    r1 = CliRunner().invoke(app, [*base, "--log", str(tmp_path / "a")])
    r2 = CliRunner().invoke(app, [*base, "--log", str(tmp_path / "b"), "--out",
                                  str(tmp_path / "p.csv"), "--no-progress"])
    assert r1.exit_code == 1 and r2.exit_code == 0, (r1.output, r2.output)
    a, b = list(read_records(tmp_path / "a")), list(read_records(tmp_path / "b"))
    assert len(a) == 7 and [r["source"] for r in b] == [r["source"] for r in a]
    for x, y in zip(a, b, strict=True):
        assert (x["sha256"], x["model"], x["version"]) == (y["sha256"], y["model"], y["version"])
        assert y["probs"] == pytest.approx(x["probs"], abs=1e-5)
        assert y["proj"] == pytest.approx(x["proj"], abs=1e-3)
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "q.csv"), "--engine", "ray",
                                   "--log", str(tmp_path / "c")])
    assert res.exit_code != 0 and "local engine" in res.output


def test_the_pipelines_window_seam_reads_the_log_in_the_servers_window_size(stream_log, ref_bundle):
    """`[monitor] window = W` in PIPELINE.toml: the label-free gate sees the latest window of
    W predictions, as `monitor report --window W` does (the default 100 would see none of a
    short log)."""
    from sightwise.pipeline.seams import monitor_window

    log_dir, _ = stream_log
    provider, why = monitor_window(log_dir, W)
    assert why == ""
    got = provider(ref_bundle)
    want = [w for w in monitor_report(log_dir, ref_bundle, config=MonitorConfig(
        window=W, min_n=min(20, W)))["windows"] if w["estimated_accuracy"] is not None][-1]
    assert (got["window"], got["n"]) == (want["index"], want["n"]) and got["n"] == W
    assert got["estimated_accuracy"] == pytest.approx(want["estimated_accuracy"])
