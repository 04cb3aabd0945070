"""Privacy on the serving side (#22 item 4): DICOM uploads (recognised by their magic, sized
from the header, decoded like any image; 415 with the install hint without pydicom, 413
over the pixel limit, 422 when damaged); uploads never reach the disk unless kept, and
kept ones lose their metadata (and faces with --blur-faces); the hash-chained audit log
of admin actions and predictions, its tail at GET /v1/admin/audit, and
`sightwise privacy verify-audit` on the log the server wrote."""

from __future__ import annotations

import importlib.util
import io
import json
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sightwise.core import sha256_bytes
from sightwise.errors import SightwiseError
from sightwise.monitor.log import read_records
from sightwise.privacy.audit import token_id


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


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        time.sleep(0.02)


def _dicom(name: str) -> bytes:
    data = pytest.importorskip("pydicom.data")
    return Path(data.get_testdata_file(name, download=False)).read_bytes()


def _png_with_text(marker: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker)
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _files_holding(roots, needle: bytes) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.is_file() and needle in p.read_bytes()]


def test_dicom_uploads_are_predicted_as_their_decoded_image_and_bad_ones_get_a_4xx(
        exported, monkeypatch):
    from sightwise.data import dicom
    from sightwise.data.decode import decode_image
    from sightwise.runtime import Predictor

    ct = _dicom("CT_small.dcm")  # 128 x 128, MONOCHROME2, with a window in its header
    want = Predictor(exported[0]).probabilities([decode_image(ct)])[0]
    with H.client_for(H.app_for(exported[0])) as c:
        r = c.post("/v1/predict?top_k=1", files=H.files(("scan.bin", ct)))
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]["predictions"][0]
        assert top["probability"] == pytest.approx(float(want.max()), abs=1e-5)
        cut = c.post("/v1/predict", files=H.files(("cut.dcm", ct[:20000])))
        fake = c.post("/v1/predict", files=H.files(("f.dcm", bytes(128) + b"DICM" + b"x" * 300)))
        assert (cut.status_code, fake.status_code) == (422, 422), (cut.text, fake.text)
        assert cut.json()["error"]["code"] == "invalid_image"
    with H.client_for(H.app_for(exported[0], max_pixels=100 * 100)) as c:
        big = c.post("/v1/predict", files=H.files(("scan.dcm", ct)))
        assert big.status_code == 413 and "128x128" in big.json()["error"]["message"]

    def no_pydicom():
        raise dicom.ImageDecodeError(dicom.INSTALL_HINT)

    monkeypatch.setattr(dicom, "_pydicom", no_pydicom)
    with H.client_for(H.app_for(exported[0])) as c:
        r = c.post("/v1/predict", files=H.files(("scan.dcm", ct)))
    assert r.status_code == 415 and "pip install 'sightwise[dicom]'" in r.json()["error"]["message"]


def test_uploads_never_reach_the_disk_unless_kept_and_kept_ones_lose_their_metadata(
        exported, tmp_path):
    marker = f"patient-{secrets.token_hex(8)}"
    upload = _png_with_text(marker)
    pixels = upload[upload.index(b"IDAT"):upload.index(b"IDAT") + 64]  # compressed pixels
    tmpdir, log_dir = tmp_path / "tmp", tmp_path / "log"
    tmpdir.mkdir()
    server = H.start_server(tmp_path, env={"TMPDIR": str(tmpdir)}, bundle=str(exported[0]),
                            log_dir=str(log_dir))
    try:
        assert server.post("/v1/predict", files=H.files(("a.png", upload))).status_code == 200
        assert server.post("/v1/predict", content=upload,
                           headers={"content-type": "image/png"}).status_code == 200
        _wait(lambda: sum(1 for _ in read_records(log_dir)) == 2, "both recorded")
    finally:
        server.stop()
    home = Path(__import__("os").environ["SIGHTWISE_HOME"])
    assert _files_holding([tmpdir, log_dir, home], pixels) == []
    assert _files_holding([tmpdir, log_dir, home], marker.encode()) == []

    # Kept: the pixels are on disk (so the search above can find them), the text is not.
    kept_log = tmp_path / "kept"
    app = H.app_for(exported[0], log=True, log_dir=str(kept_log), keep_images=True)
    with H.client_for(app) as c:
        assert c.post("/v1/predict", files=H.files(("a.png", upload))).status_code == 200
        _wait(lambda: app.state.sw.monitoring.mlog.log.status()["written"] == 1, "written")
    (kept,) = _files_holding([kept_log], pixels)
    assert kept.name == f"{sha256_bytes(upload)}.png" and marker.encode() not in kept.read_bytes()


def test_the_audit_log_records_admin_actions_and_predictions_and_verifies(exported, tmp_path,
                                                                         monkeypatch):
    from sightwise.cli import app as cli
    from sightwise.serve import audit as serve_audit

    monkeypatch.setattr(serve_audit, "REFUSALS_PER_MINUTE", 2)
    path = tmp_path / "audit" / "audit.jsonl"
    app = H.app_for(exported[0], version=5, audit_log=str(path), audit_predictions=True,
                    token=H.TOKEN)
    images = [(f"{i}.png", _png_with_text(f"image {i}")) for i in range(3)]
    with H.client_for(app) as c:
        answers = [c.post("/v1/predict?top_k=1", files=H.files(images[i]),
                          headers=H.AUTH if i < 2 else {}).json() for i in range(3)]
        assert c.get("/v1/admin/status", headers=H.AUTH).status_code == 200
        assert c.post("/v1/admin/reload", headers=H.AUTH).json()["swapped"] is True
        for _ in range(4):  # refused: two are recorded, two only counted
            assert c.get("/v1/admin/status").status_code == 401
        _wait(lambda: app.state.sw.observers.status()["audit"]["delivered"] == 3, "audited")
        tail = c.get("/v1/admin/audit?limit=50", headers=H.AUTH).json()
        metrics = c.get("/metrics").text
    text = path.read_text()
    assert H.TOKEN not in text
    records = [json.loads(line) for line in text.splitlines()]
    actions = [r["action"] for r in records]
    assert actions[0] == "server.start" and actions[-1] == "server.stop"
    assert actions.count("predict") == 3 and actions.count("admin.audit") == 1
    mine = token_id(H.TOKEN)
    predicted = sorted((r for r in records if r["action"] == "predict"),
                       key=lambda r: [sha256_bytes(d) for _, d in images].index(r["image_sha256"]))
    for rec, answer, i in zip(predicted, answers, range(3), strict=True):
        assert rec["image_sha256"] == sha256_bytes(images[i][1]) and rec["client"] == "testclient"
        assert rec["token_id"] == (mine if i < 2 else None) and rec["model_version"] == "5"
        assert rec["result"]["label"] == answer["results"][0]["predictions"][0]["label"]
    admin = [r for r in records if r["action"].startswith("admin.")]
    assert [(r["action"], r["result"]["status"], r["token_id"]) for r in admin[:4]] == [
        ("admin.status", 200, mine), ("admin.reload", 200, mine),
        ("admin.status", 401, None), ("admin.status", 401, None)]
    assert admin[1]["result"]["swapped"] is True and admin[1]["result"]["version_after"] == "5"
    assert 'sightwise_audit_records_total{outcome="suppressed"} 2.0' in metrics
    # The tail the route answered ends at the head it names (its own record comes after).
    assert tail["head"]["seq"] == tail["records"][-1]["seq"] and tail["path"] == str(path)

    ok = CliRunner().invoke(cli, ["privacy", "verify-audit", str(path)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: ")
    lines = text.splitlines()
    i = actions.index("predict")
    lines[i] = lines[i].replace(records[i]["image_sha256"], "0" * 64)
    path.write_text("\n".join(lines) + "\n")
    bad = CliRunner().invoke(cli, ["privacy", "verify-audit", str(path)])
    assert bad.exit_code == 1 and f"line {i + 1}" in bad.output and "edited" in bad.output


def test_blur_faces_needs_the_extra_and_kept_images_and_says_so_at_start_up(
        exported, monkeypatch, tmp_path):
    from sightwise.cli import app as cli
    from sightwise.privacy import faces

    monkeypatch.setattr(faces, "faces_available", lambda: False)
    with pytest.raises(SightwiseError, match=r"pip install 'sightwise\[faces\]'"):
        H.app_for(exported[0], log=True, log_dir=str(tmp_path / "log"), keep_images=True,
                  blur_faces=True)
    res = CliRunner().invoke(cli, ["serve", "--bundle", str(exported[0]), "--port", "0",
                                   "--blur-faces"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: --blur-faces applies to kept images: add --keep-images"
    res = CliRunner().invoke(cli, ["serve", "--bundle", str(exported[0]), "--port", "0",
                                   "--no-log", "--keep-images"])
    assert res.exit_code == 2 and "--keep-images" in res.output


def test_kept_images_have_their_faces_blurred(exported, tmp_path):
    skdata = pytest.importorskip("skimage.data")
    from sightwise.privacy.faces import faces_available

    if not faces_available():
        pytest.skip("the faces extra is not installed")
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 1.5)})
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((256, 256)).save(buf, "JPEG", quality=92,
                                                                exif=exif)
    upload = buf.getvalue()
    app = H.app_for(exported[0], log=True, log_dir=str(tmp_path / "log"), keep_images=True,
                    blur_faces=True)
    cleaner = app.state.sw.monitoring.observer.cleaner
    assert cleaner.detector.detect(Image.open(io.BytesIO(upload)))  # the reference: a face
    with H.client_for(app) as c:
        assert c.post("/v1/predict", files=H.files(("me.jpg", upload))).status_code == 200
        _wait(lambda: app.state.sw.monitoring.mlog.log.status()["written"] == 1, "written")
    (rec,) = read_records(tmp_path / "log")
    with Image.open(tmp_path / "log" / rec["img"]) as kept:
        assert not kept.getexif().get_ifd(0x8825)
        assert cleaner.detector.detect(kept) == []
    assert cleaner.counts["faces_blurred"] == 1
