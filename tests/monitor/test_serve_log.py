"""The prediction log and the drift monitor wired into `sightwise serve` (#18): every answered
prediction is a record (the answer's probabilities, the upload's sha256, the version); a
drifted stream raises an alert that fills the labelling queue with the kept (cleaned)
images and calls the webhook; GET /v1/monitor, the chart and /metrics show it behind the
token; a hot swap starts the new version's windows; a broken log costs records, never a
prediction; a kill -9 of the real server process leaves a log that reads back whole."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sightwise.core import sha256_bytes
from sightwise.monitor.log import read_records


def _helpers():
    """tests/serve/_helpers.py (loaded by path: the suite runs in importlib mode)."""
    if "sw_serve_helpers" not in sys.modules:
        path = Path(__file__).parents[1] / "serve" / "_helpers.py"
        spec = importlib.util.spec_from_file_location("sw_serve_helpers", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sw_serve_helpers"] = module
        spec.loader.exec_module(module)
    return sys.modules["sw_serve_helpers"]


H = _helpers()
W = 10  # predictions per window: an alert after 2 drifted windows of 3


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        time.sleep(0.02)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_with_gps(arr: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 2.0)})
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stream(ref_bundle):
    """(clean uploads: the test split, one as a JPEG with GPS in its EXIF; noisy uploads:
    training images under heavy Gaussian noise), as (filename, bytes)."""
    from sightwise.bundle import load_bundle
    from sightwise.data.decode import decode_image
    from sightwise.export.manifest import bundle_samples

    bundle = load_bundle(ref_bundle)
    rng = np.random.default_rng(0)
    test = [np.asarray(decode_image(s.source)) for s in bundle_samples(bundle, "test")][:2 * W]
    train = [np.asarray(decode_image(s.source)) for s in bundle_samples(bundle, "train")]
    noisy = [np.clip(a + rng.normal(0, 90, a.shape), 0, 255).astype(np.uint8)
             for a in train[:3 * W]]
    clean = [(f"clean{i}.png", _png(a)) for i, a in enumerate(test)]
    clean[3] = ("phone.jpg", _jpeg_with_gps(test[3]))
    return clean, [(f"noisy{i}.png", _png(a)) for i, a in enumerate(noisy)]


@pytest.fixture
def webhook():
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
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


def _post(client, uploads, per_request: int = 10) -> list[dict]:
    """Predict `uploads` (several per request); the answers' results, in order."""
    results = []
    for i in range(0, len(uploads), per_request):
        r = client.post("/v1/predict?top_k=1", files=H.files(*uploads[i:i + per_request]))
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    return results


def test_every_prediction_is_logged_and_drift_alerts_with_the_queue_and_webhook(
        ref_bundle, stream, webhook, tmp_path):
    clean, noisy = stream
    url, got = webhook
    log_dir, queue = tmp_path / "log", tmp_path / "queue"
    app = H.app_for(ref_bundle, name="textures", version=7, log=True, log_dir=str(log_dir),
                    monitor_window=W, keep_images=True, alert_webhook=url,
                    queue_dir=str(queue), token=H.TOKEN)
    monitoring = app.state.sw.monitoring
    with H.client_for(app) as c:
        answers = _post(c, clean + noisy)
        assert c.get("/v1/monitor").status_code == 401  # the token gate, like admin routes
        _wait(lambda: monitoring.mlog.log.status()["written"] == len(answers), "all written")
        # The live monitor reads each batch after it is written (in the writer thread).
        _wait(lambda: len(monitoring.mlog.summary()["windows"]) == 5, "five windows tested")
        summary = c.get("/v1/monitor", headers=H.AUTH).json()
        plot = c.get("/v1/monitor/plot.png?dpi=50", headers=H.AUTH)
        metrics = c.get("/metrics").text

    # One record per answered image: the upload's sha256, the answer's probability, the
    # version that answered, in the order answered.
    records = list(read_records(log_dir))
    uploads = clean + noisy
    assert [r["sha256"] for r in records] == [sha256_bytes(d) for _, d in uploads]
    for rec, ans in zip(records, answers, strict=True):
        top = ans["predictions"][0]
        assert (rec["model"], rec["version"]) == ("textures", "7")
        assert rec["probs"][int(np.argmax(rec["probs"]))] == pytest.approx(top["probability"],
                                                                           rel=1e-6)
        assert rec["proj"] is not None and rec["d2"] is not None and "source" not in rec
    # The kept JPEG: same compressed pixels, no EXIF GPS or maker left.
    phone = next(r for r in records if r["sha256"] == sha256_bytes(clean[3][1]))
    kept = log_dir / phone["img"]
    with Image.open(kept) as im, Image.open(io.BytesIO(clean[3][1])) as orig:
        assert not im.getexif().get_ifd(0x8825) and 0x010F not in im.getexif()
        assert np.array_equal(np.asarray(im), np.asarray(orig))

    # Two clean windows, then three noisy ones: drift from the third, an alert from the fourth.
    windows = summary["windows"]
    assert [w["n"] for w in windows] == [W] * 5 and summary["version"] == "7"
    assert [w["drift"] for w in windows][2:] == [True, True, True]
    assert [w["alert"] for w in windows] == [False, False, False, True, True]
    assert summary["alerts"] == 1 and summary["log"]["dropped"] == 0
    assert summary["gauges"]["sightwise_monitor_alert"] == 1.0
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    assert "sightwise_monitor_alert 1.0" in metrics
    assert "sightwise_monitor_log_dropped_total 0.0" in metrics
    assert 'sightwise_observer_lane_events_total{observer="prediction_log",outcome="dropped"} ' \
           '0.0' in metrics
    # The queue holds the drifted windows' images, least confident first; the webhook heard.
    entries = sorted(p for p in queue.iterdir() if not p.name.startswith("."))
    items = [json.loads(x) for x in (entries[0] / "items.jsonl").read_text().splitlines()]
    assert len(items) >= W and all((entries[0] / it["image"]).is_file() for it in items)
    assert {it["sha256"] for it in items} <= {sha256_bytes(d) for _, d in noisy}
    _wait(lambda: got, "the webhook was called", timeout=30)
    assert got[0]["event"] == "sightwise.drift_alert" and got[0]["model"] == "textures"


def test_a_hot_swap_starts_the_new_versions_windows(ref_bundle, stream, tmp_path):
    clean, _ = stream
    v1 = H.bundle_version(ref_bundle, tmp_path / "v1", 1.0)
    v2 = H.bundle_version(ref_bundle, tmp_path / "v2", 4.0)  # other probabilities
    current = [(1, v1)]
    app = H.app_for(name="textures", log=True, log_dir=str(tmp_path / "log"),
                    monitor_window=W, token=H.TOKEN, watch=lambda: current[0])
    mlog = app.state.sw.monitoring.mlog
    with H.client_for(app) as c:
        _post(c, clean[:W])
        _wait(lambda: mlog.log.status()["written"] == W, "v1 written")
        _wait(lambda: mlog.summary()["windows"], "the v1 window tested")
        assert c.get("/v1/monitor", headers=H.AUTH).json()["version"] == "1"
        current[0] = (2, v2)
        assert c.post("/v1/admin/reload", headers=H.AUTH).json()["swapped"] is True
        _post(c, clean[W:2 * W])
        _wait(lambda: mlog.log.status()["written"] == 2 * W, "v2 written")
        _wait(lambda: mlog.summary()["windows"], "the v2 window tested")
        summary = c.get("/v1/monitor", headers=H.AUTH).json()
    assert [r["version"] for r in read_records(tmp_path / "log")] == ["1"] * W + ["2"] * W
    assert summary["version"] == "2"
    assert [(w["index"], w["version"]) for w in summary["windows"]] == [(0, "2")]


def test_a_broken_log_never_fails_a_prediction_and_counts_the_loss(ref_bundle, stream,
                                                                   tmp_path):
    clean, _ = stream
    (tmp_path / "a-file").write_text("not a folder")
    app = H.app_for(ref_bundle, log=True, log_dir=str(tmp_path / "a-file" / "log"))
    mlog = app.state.sw.monitoring.mlog
    with H.client_for(app) as c:
        assert len(_post(c, clean[:6], per_request=3)) == 6
        _wait(lambda: mlog.log.status()["dropped"] == 6, "the loss counted")
        metrics = c.get("/metrics").text
        assert c.get("/readyz").status_code == 200
    assert "sightwise_monitor_log_dropped_total 6.0" in metrics
    assert "sightwise_monitor_log_healthy 0.0" in metrics


def _written(server) -> int:
    status = server.get("/v1/admin/status", headers=H.AUTH).json()
    return status["prediction_log"]["written"]


def _predict_confirmed(server, uploads) -> list[str]:
    """Predict `uploads` one by one and wait until the server says they are written."""
    before = _written(server)
    for name, data in uploads:
        assert server.post("/v1/predict", files=H.files((name, data))).status_code == 200
    _wait(lambda: _written(server) == before + len(uploads), "confirmed written")
    return [sha256_bytes(d) for _, d in uploads]


def _kill_9_while_predicting(server, uploads) -> None:
    answered, stop = [], threading.Event()

    def keep_predicting():
        for i in range(500):  # bounded; the kill ends it much sooner
            if stop.is_set():
                return
            name, data = uploads[i % len(uploads)]
            try:
                r = httpx.post(server.url + "/v1/predict", timeout=10,
                               files=H.files((name, data)))
            except httpx.TransportError:
                return
            answered.append(r.status_code)

    client = threading.Thread(target=keep_predicting, daemon=True)
    client.start()
    _wait(lambda: len(answered) >= 5, "requests in flight")
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=30) == -signal.SIGKILL
    stop.set()
    client.join(30)


def test_kill_9_of_the_server_leaves_a_log_that_reads_back_whole(ref_bundle, stream,
                                                                 tmp_path):
    """Twice: predictions confirmed written, then a kill -9 while requests keep coming.
    Every line of every segment reads back (no torn or garbled record), every confirmed
    prediction is there, and a new server appends to the same log."""
    clean, noisy = stream
    uploads = clean + noisy
    log_dir = tmp_path / "log"
    confirmed: list[str] = []
    for round_ in range(2):
        server = H.start_server(tmp_path, env={"SIGHTWISE_TOKEN": H.TOKEN},
                                bundle=str(ref_bundle), log_dir=str(log_dir), monitor_window=W)
        try:
            confirmed += _predict_confirmed(server, uploads[round_ * 8:round_ * 8 + 8])
            _kill_9_while_predicting(server, uploads)
        finally:
            server.stop()
    counts: dict = {}
    records = list(read_records(log_dir, counts=counts))
    lines = sum(len(p.read_bytes().splitlines()) for p in log_dir.glob("seg-*.jsonl"))
    assert counts.get("corrupt", 0) == 0 and len(records) == lines
    assert set(confirmed) <= {r["sha256"] for r in records}
    assert len({p.name.split("-")[2] for p in log_dir.glob("seg-*.jsonl")}) == 2  # two pids
