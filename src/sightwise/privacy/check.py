"""`privacy check`: which files of a data set carry personal data, and what.

Per file: photo metadata (`metadata.image_findings`), DICOM PHI and the burned-in flag
(`dicom_deid.phi_findings`) and, when torch and facenet-pytorch are installed, faces
(`faces.FaceDetector`). The report is the `privacy check --json` contract:

    {"files": [{"path": "cats/a.jpg", "format": "JPEG", "findings": [{"kind": "gps", ...}]}],
     "errors": [{"path": ..., "error": ...}], "summary": {...}, "faces_checked": bool, ...}

A clean file has an empty `findings` list; unreadable files are listed under `errors`, not
as clean. Paths are relative to the checked folder, with forward slashes.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from pathlib import Path

from sightwise.data.decode import is_image_path
from sightwise.data.dicom import looks_like_dicom
from sightwise.errors import DataError, ImageDecodeError

MAX_EXAMPLES = 5


def iter_candidates(root: Path) -> tuple[list[Path], list[Path]]:
    """(files to check, other files) under `root` (or `root` itself), sorted, hidden skipped.

    Images by suffix (.dcm included), and suffix-less files with the DICOM magic (DICOM
    folders often name files IM0001 or by number).
    """
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    images, others = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        (images if is_image_path(path) or _dicom_without_suffix(path) else others).append(path)
    return images, others


def _dicom_without_suffix(path: Path) -> bool:
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            return looks_like_dicom(f.read(132))
    except OSError:
        return False


def file_findings(data: bytes, name: str | Path, detector=None) -> tuple[str, list[dict]]:
    """(format, findings) for one file's bytes. Raises ImageDecodeError when unreadable."""
    if looks_like_dicom(data, name):
        from sightwise.data.dicom import check_complete, read_dataset
        from sightwise.privacy.dicom_deid import phi_findings

        ds = read_dataset(data, name=name)
        check_complete(ds)
        try:
            return "DICOM", phi_findings(ds)
        except Exception as exc:  # a value pydicom cannot convert (bad VR) is the file's fault
            raise ImageDecodeError(f"unreadable DICOM attribute ({exc})") from None
    from PIL import Image, UnidentifiedImageError

    from sightwise.privacy.metadata import image_findings

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Exception as exc:  # Pillow's header parsers raise many types on damaged files
        raise ImageDecodeError(f"unreadable image header ({exc})") from None
    try:
        findings = image_findings(data)
    except Exception as exc:  # metadata we cannot parse may still be personal: flag it
        findings = [{"kind": "exif", "source": "unparsed", "field": "metadata",
                     "value": f"unreadable ({type(exc).__name__}); scrub removes it"}]
    if detector is not None:
        from sightwise.data.decode import decode_image

        findings += [f.to_dict() for f in detector.detect(decode_image(data))]
    return fmt, findings


def check_dataset(path: str | Path, *, faces: bool | None = None, detector=None,
                  progress: bool = True) -> dict:
    """Check every image under `path`; see the module notes for the report.

    `faces`: True requires the detector (error when not installed), None uses it when
    installed, False skips it.
    """
    root = Path(path)
    files, others = iter_candidates(root)
    detector, faces_note = make_detector(faces, detector)
    report = {"root": str(root), "files": [], "errors": [], "faces_checked": detector is not None,
              "faces_note": faces_note, "not_checked": [relative_path(p, root) for p in others]}
    for file in progress_iter(files, progress, "privacy check"):
        rel = relative_path(file, root)
        try:
            fmt, findings = file_findings(file.read_bytes(), file, detector)
        except (ImageDecodeError, OSError) as exc:
            report["errors"].append({"path": rel, "error": error_reason(exc)})
            continue
        report["files"].append({"path": rel, "format": fmt, "findings": findings})
    report["summary"] = summarize(report)
    return report


def summarize(report: dict) -> dict:
    by_kind: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for entry in report["files"]:
        for kind in sorted({f["kind"] for f in entry["findings"]}):
            by_kind[kind] += 1
            examples.setdefault(kind, [])
            if len(examples[kind]) < MAX_EXAMPLES:
                examples[kind].append(entry["path"])
    flagged = sum(1 for e in report["files"] if e["findings"])
    return {"files": len(report["files"]) + len(report["errors"]), "flagged": flagged,
            "clean": len(report["files"]) - flagged, "errors": len(report["errors"]),
            "files_by_kind": dict(sorted(by_kind.items())), "examples": examples}


def require_clean(dataset_path: str | Path, *, faces: bool = False) -> None:
    """Raise DataError listing the files `privacy check` flags; for `train --require-clean`.

    Faces are checked only when asked (`faces=True`): detection costs ~1 s per image on a
    laptop CPU, which the metadata and DICOM checks do not.
    """
    report = check_dataset(dataset_path, faces=faces, progress=False)
    flagged = [e for e in report["files"] if e["findings"]]
    if not flagged:
        return
    lines = [f"{e['path']}: {', '.join(sorted({f['kind'] for f in e['findings']}))}"
             for e in flagged[:10]]
    more = f" (and {len(flagged) - 10} more)" if len(flagged) > 10 else ""
    raise DataError(f"{len(flagged)} file(s) carry personal data{more}; run `sightwise "
                    f"privacy scrub {dataset_path} --out CLEAN` and train on CLEAN: "
                    + "; ".join(lines))


def make_detector(faces: bool | None, detector):
    from sightwise.privacy.faces import INSTALL_HINT, FaceDetector, faces_available

    if detector is not None or faces is False:
        return detector, "" if detector is not None else "faces not checked (--no-faces)"
    if not faces_available():
        if faces:
            raise DataError(INSTALL_HINT)
        return None, "faces not checked: " + INSTALL_HINT
    return _LazyDetector(FaceDetector), ""


class _LazyDetector:
    """Builds the detector (torch import, weights: seconds) at the first photo, so a
    DICOM-only data set never pays for it."""

    def __init__(self, factory):
        self._factory, self._detector = factory, None

    def detect(self, image):
        if self._detector is None:
            self._detector = self._factory()
        return self._detector.detect(image)


def progress_iter(items, enabled: bool, label: str):
    if not enabled or len(items) < 2:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)


def relative_path(path: Path, root: Path) -> str:
    return path.name if path == root else path.relative_to(root).as_posix()


def error_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# -- HTML ----------------------------------------------------------------------------------


def report_html(report: dict) -> str:
    """A self-contained page: counts by kind, then every flagged file with its findings."""
    s = report["summary"]
    esc = html.escape
    rows = []
    for entry in report["files"]:
        for f in entry["findings"]:
            detail = f.get("value") or (f"box {f['box']} score {f['score']}" if "box" in f else "")
            rows.append(f"<tr><td>{esc(entry['path'])}</td><td>{esc(f['kind'])}</td>"
                        f"<td>{esc(str(f.get('field', f.get('source', ''))))}</td>"
                        f"<td>{esc(str(detail))}</td></tr>")
    errors = "".join(f"<li>{esc(e['path'])}: {esc(e['error'])}</li>" for e in report["errors"])
    kinds = "".join(f"<li>{esc(k)}: {n} file(s)</li>" for k, n in s["files_by_kind"].items())
    faces = "faces checked" if report["faces_checked"] else esc(report.get("faces_note", ""))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Sightwise privacy check</title><style>body{{font:14px sans-serif;margin:2em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
</style></head><body><h1>Privacy check: {esc(report['root'])}</h1>
<p>{s['files']} file(s): {s['flagged']} with personal data, {s['clean']} clean,
{s['errors']} unreadable; {faces}.</p><ul>{kinds}</ul>
<table><tr><th>file</th><th>kind</th><th>field</th><th>value</th></tr>{''.join(rows)}</table>
{'<h2>Unreadable</h2><ul>' + errors + '</ul>' if errors else ''}
<p>Tooling, not legal advice: see docs/guides/privacy.md for what is and is not covered.</p>
</body></html>
"""
