"""`privacy check` (its --json contract) and `privacy scrub` end to end on a small mixed
folder: photos with GPS/EXIF/text chunks, DICOM (good, burned-in, truncated, fake), a
clean photo and a text file. Faces are off here (tests/privacy/test_faces.py has them)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sightwise.errors import DataError
from sightwise.privacy.audit import verify_audit
from sightwise.privacy.check import check_dataset, require_clean
from sightwise.privacy.cli import privacy_app
from sightwise.privacy.scrub import scrub_dataset

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

KINDS = {"gps", "exif", "face", "dicom_phi", "burned_in"}


def _dicom(name: str) -> bytes:
    return open(get_testdata_file(name, download=False), "rb").read()


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "data"
    (root / "site" / "north").mkdir(parents=True)
    (root / "scans").mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0132] = "2022:03:04 05:06:07"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "S", (33.0, 51.0, 54.0), "E", (151.0, 12.0, 36.0)
    photo.save(root / "site" / "north" / "gate.jpg", quality=90, exif=exif)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    photo.save(root / "site" / "label.png", pnginfo=info)
    photo.save(root / "site" / "clean.png")
    (root / "scans" / "ct.dcm").write_bytes(_dicom("CT_small.dcm"))
    (root / "scans" / "IM0001").write_bytes(_dicom("MR_small.dcm"))  # DICOM without suffix
    burned = pydicom.dcmread(io.BytesIO(_dicom("MR_small.dcm")))
    burned.BurnedInAnnotation = "YES"
    burned.save_as(root / "scans" / "burned.dcm")
    (root / "scans" / "cut.dcm").write_bytes(_dicom("CT_small.dcm")[:20000])
    (root / "scans" / "fake.dcm").write_bytes(bytes(128) + b"DICM" + b"not dicom" * 30)
    (root / "notes.txt").write_text("patient list is elsewhere")
    return root


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_json_contract(mixed):
    res = CliRunner().invoke(privacy_app, ["check", str(mixed), "--json", "--no-faces"])
    assert res.exit_code == 1  # something was found
    report = json.loads(res.output)
    by_path = {f["path"]: f for f in report["files"]}
    assert set(by_path) == {"site/north/gate.jpg", "site/label.png", "site/clean.png",
                            "scans/ct.dcm", "scans/IM0001", "scans/burned.dcm"}
    for entry in report["files"]:
        assert isinstance(entry["findings"], list)
        assert all(f["kind"] in KINDS for f in entry["findings"])
    assert by_path["site/clean.png"]["findings"] == []
    gate = by_path["site/north/gate.jpg"]["findings"]
    gps = next(f for f in gate if f["kind"] == "gps")
    assert gps["lat"] == pytest.approx(-(33 + 51 / 60 + 54 / 3600), abs=1e-6)
    assert {"kind": "exif", "source": "png-text", "field": "Author", "value": "Jane Doe"} in \
        by_path["site/label.png"]["findings"]
    ct = {f.get("field") for f in by_path["scans/ct.dcm"]["findings"]}
    assert {"PatientName", "PatientID", "InstitutionName", "StudyInstanceUID",
            "private attributes"} <= ct
    assert {"kind", "tag", "field", "value"} <= set(by_path["scans/burned.dcm"]["findings"][-1])
    assert any(f["kind"] == "burned_in" for f in by_path["scans/burned.dcm"]["findings"])
    errors = {e["path"]: e["error"] for e in report["errors"]}
    assert set(errors) == {"scans/cut.dcm", "scans/fake.dcm"}
    assert "truncated" in errors["scans/cut.dcm"] and "DICOM" in errors["scans/fake.dcm"]
    assert report["not_checked"] == ["notes.txt"] and report["faces_checked"] is False
    assert report["summary"]["flagged"] == 5 and report["summary"]["clean"] == 1


def test_scrub_keeps_relative_paths_loses_nothing_and_the_copy_checks_clean(mixed, tmp_path):
    before = _hashes(mixed)
    out, mapping = tmp_path / "clean", tmp_path / "secret" / "mapping.json"
    res = CliRunner().invoke(privacy_app, ["scrub", str(mixed), "--out", str(out),
                                           "--mapping-out", str(mapping), "-q"])
    assert res.exit_code == 0, res.output
    assert _hashes(mixed) == before  # the source is untouched
    written = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and ".sightwise" not in p.parts}
    assert written == {"site/north/gate.jpg", "site/label.png", "site/clean.png",
                       "scans/ct.dcm", "scans/IM0001"}
    summary = json.loads((out / ".sightwise" / "scrub.json").read_text())
    assert summary["burned_in"] == ["scans/burned.dcm"]
    assert {e["path"] for e in summary["errors"]} == {"scans/cut.dcm", "scans/fake.dcm"}
    assert summary["not_copied"] == ["notes.txt"] and summary["lossless"] == 3
    report = check_dataset(out, faces=False, progress=False)
    assert [f for e in report["files"] for f in e["findings"]] == [] and not report["errors"]
    audit = verify_audit(out / ".sightwise" / "audit.jsonl")
    assert audit.ok and audit.records == 5 + 1 + 1  # files, the burned-in skip, the summary
    assert mapping.stat().st_mode & 0o777 == 0o600
    assert pydicom.dcmread(mixed / "scans" / "ct.dcm").StudyInstanceUID in \
        json.loads(mapping.read_text())["uids"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "site" / "label.png")),
                                  np.asarray(Image.open(mixed / "site" / "label.png")))


def test_scrub_allows_burned_in_on_request(mixed, tmp_path):
    summary = scrub_dataset(mixed, tmp_path / "clean", allow_burned_in=True, progress=False)
    assert summary["burned_in"] == [] and (tmp_path / "clean" / "scans" / "burned.dcm").exists()


def test_scrub_refuses_unsafe_destinations(mixed, tmp_path):
    with pytest.raises(DataError, match="outside the source"):
        scrub_dataset(mixed, mixed / "clean", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        scrub_dataset(mixed, tmp_path / "full", progress=False)
    with pytest.raises(DataError, match="mapping re-identifies"):
        scrub_dataset(mixed, tmp_path / "c", mapping_out=tmp_path / "c" / "m.json",
                      progress=False)
    with pytest.raises(ValueError, match="only 'basic'"):
        scrub_dataset(mixed, tmp_path / "d", dicom_profile="full", progress=False)
    res = CliRunner().invoke(privacy_app, ["scrub", str(mixed), "--out", str(mixed / "x")])
    assert res.exit_code == 2 and res.output.startswith("error:")


def test_require_clean_refuses_flagged_data_and_accepts_the_clean_copy(mixed, tmp_path):
    for bad in ("cut.dcm", "fake.dcm"):
        (mixed / "scans" / bad).unlink()
    with pytest.raises(DataError, match=r"5 file\(s\) carry personal data") as err:
        require_clean(mixed)
    assert "site/north/gate.jpg: exif, gps" in str(err.value)
    scrub_dataset(mixed, tmp_path / "clean", progress=False)
    require_clean(tmp_path / "clean")  # no exception


def test_html_report_lists_flagged_files(mixed, tmp_path):
    shutil.rmtree(mixed / "scans")
    page = tmp_path / "check.html"
    res = CliRunner().invoke(privacy_app, ["check", str(mixed), "--no-faces", "--html", str(page),
                                           "-q"])
    assert res.exit_code == 1 and "2 with personal data" in res.output
    html = page.read_text()
    assert "site/north/gate.jpg" in html and "Jane Doe" in html and "clean.png" not in html


def test_scrub_bytes_for_kept_uploads(mixed):
    from sightwise.privacy.dicom_deid import Deidentifier
    from sightwise.privacy.metadata import image_findings
    from sightwise.privacy.scrub import scrub_bytes

    jpeg, info = scrub_bytes((mixed / "site" / "north" / "gate.jpg").read_bytes())
    assert info == {"format": "JPEG", "lossless": True} and image_findings(jpeg) == []
    deid = Deidentifier()
    ct, info = scrub_bytes((mixed / "scans" / "ct.dcm").read_bytes(), deidentifier=deid)
    assert info["format"] == "DICOM" and pydicom.dcmread(io.BytesIO(ct)).PatientIdentityRemoved == "YES"
    assert pydicom.dcmread(io.BytesIO(ct)).StudyInstanceUID in deid.uids.values()
    with pytest.raises(ValueError, match="Burned In Annotation"):
        scrub_bytes((mixed / "scans" / "burned.dcm").read_bytes())
    with pytest.raises(ValueError, match="needs a FaceDetector"):
        scrub_bytes(jpeg, faces="blur")


def test_check_without_torch_reports_metadata_and_says_faces_were_not_checked(mixed):
    import subprocess
    import sys

    script = f"""
import importlib.abc, json, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision", "facenet_pytorch")):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
from sightwise.privacy.check import check_dataset
r = check_dataset({str(mixed / "site")!r}, progress=False)
assert "torch" not in sys.modules
print(json.dumps([r["faces_checked"], r["faces_note"], r["summary"]["flagged"]]))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    checked, note, flagged = json.loads(res.stdout.strip().splitlines()[-1])
    assert checked is False and "faces not checked" in note and flagged == 2
