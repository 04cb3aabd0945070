"""`privacy scrub`: write a clean copy of a data set, same relative paths, and say what changed.

- photos (JPEG/PNG/WebP/TIFF/BMP): metadata removed by `strip.strip_image`, pixels copied
  byte for byte except TIFF (re-written losslessly); with faces="blur"/"box", files in
  which the detector finds faces are re-encoded from their blurred pixels (JPEG at quality
  95 with the original chroma subsampling, PNG/TIFF/lossless WebP losslessly);
- DICOM: de-identified by `dicom_deid.Deidentifier` (one key per run, so UIDs and
  date shifts agree across all files); files flagged as burned-in annotation are listed and
  not copied unless `allow_burned_in`;
- unreadable files are listed and not copied; other files (not images) are not copied.

The source is never modified. The summary goes to CLEAN/.sightwise/scrub.json and each
written file gets a record in a hash-chained audit log (CLEAN/.sightwise/audit.jsonl by
default). The re-identification mapping is written only when asked, never inside CLEAN.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from sightwise.core import atomic_write_bytes, atomic_write_json, sha256_bytes
from sightwise.errors import DataError, ImageDecodeError
from sightwise.privacy.audit import AuditLog
from sightwise.privacy.check import (
    error_reason,
    iter_candidates,
    make_detector,
    progress_iter,
    relative_path,
)

PROFILES = ("basic",)


def scrub_dataset(src: str | Path, out: str | Path, *, faces: str | None = None,
                  dicom_profile: str = "basic", mapping_out: str | Path | None = None,
                  allow_burned_in: bool = False, audit_log: str | Path | None = None,
                  detector=None, progress: bool = True) -> dict:
    """Write the clean copy of `src` into the new or empty folder `out`; returns the summary."""
    src, out = Path(src), Path(out)
    mapping = Path(mapping_out) if mapping_out else None
    _validate(src, out, faces, dicom_profile, mapping)
    files, others = iter_candidates(src)
    if faces:
        detector, _ = make_detector(True, detector)
    from sightwise.privacy.dicom_deid import Deidentifier

    deid = Deidentifier()
    log = AuditLog(audit_log or out / ".sightwise" / "audit.jsonl")
    summary = {"source": str(src), "out": str(out), "written": 0, "lossless": 0,
               "re_encoded": [], "dicom": 0, "faces_found": 0, "burned_in": [],
               "errors": [], "not_copied": [relative_path(p, src) for p in others], "notes": {}}
    for file in progress_iter(files, progress, "privacy scrub"):
        rel = relative_path(file, src)
        try:
            data = file.read_bytes()
            clean, result = _scrub_one(data, file, deid, detector, faces, allow_burned_in)
        except _BurnedIn as exc:
            summary["burned_in"].append(rel)
            log.append("privacy.scrub.skip", image_sha256=sha256_bytes(data), path=rel,
                       result=str(exc))
            continue
        except (ImageDecodeError, OSError) as exc:
            summary["errors"].append({"path": rel, "error": error_reason(exc)})
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, clean)
        _count(summary, rel, result)
        log.append("privacy.scrub.file", image_sha256=sha256_bytes(clean), path=rel,
                   source_sha256=sha256_bytes(data), result=result)
    if mapping is not None:
        mapping.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(mapping, deid.mapping())
        os.chmod(mapping, 0o600)
    summary["audit_log"] = str(log.path)
    log.append("privacy.scrub", result={k: (len(v) if isinstance(v, list) else v)
                                       for k, v in summary.items()
                                       if k not in ("source", "out", "notes")})
    summary["audit_head"] = log.head()  # keep it elsewhere: verify-audit --expect-seq/-hash
    atomic_write_json(out / ".sightwise" / "scrub.json", summary)
    return summary


class _BurnedIn(Exception):
    pass


def scrub_bytes(data: bytes, *, faces: str | None = None, detector=None, deidentifier=None,
                allow_burned_in: bool = False) -> tuple[bytes, dict]:
    """One file's clean bytes and what was done: for the server's kept uploads.

    Photos: metadata stripped, and with faces="blur"/"box" (and a `detector`, built once
    by the caller) faces blurred and the file re-encoded. DICOM (by its DICM magic): basic
    profile de-identification with `deidentifier` (keep one per server so UIDs agree).
    Raises ImageDecodeError for an unusable file and ValueError for a DICOM flagged as
    burned-in annotation (not kept unless `allow_burned_in`).
    """
    from sightwise.privacy.dicom_deid import Deidentifier

    if faces and detector is None:
        raise ValueError("faces= needs a FaceDetector (build it once, at startup)")
    try:
        return _scrub_one(data, None, deidentifier or Deidentifier(), detector, faces,
                          allow_burned_in)
    except _BurnedIn as exc:
        raise ValueError(str(exc)) from None


def _scrub_one(data: bytes, path: Path | None, deid, detector, faces: str | None,
               allow_burned_in: bool) -> tuple[bytes, dict]:
    from sightwise.data.dicom import looks_like_dicom

    if looks_like_dicom(data, path):
        from sightwise.privacy.dicom_deid import BurnedInAnnotation, deidentify_bytes

        try:
            clean, changes = deidentify_bytes(data, deid, name=path and str(path),
                                              allow_burned_in=allow_burned_in)
        except BurnedInAnnotation as exc:
            raise _BurnedIn(str(exc)) from None
        except ImageDecodeError:
            raise
        except Exception as exc:  # pydicom cannot convert or write a damaged attribute
            raise ImageDecodeError(f"cannot de-identify this DICOM file ({exc})") from None
        return clean, {"format": "DICOM", "profile": "basic", "changed": len(changes),
                       "pixels": "unchanged"}
    from sightwise.privacy.strip import strip_image

    stripped = strip_image(data)
    result = {"format": stripped.format, "lossless": stripped.lossless}
    if stripped.note:
        result["note"] = stripped.note
    if faces and detector is not None:
        from sightwise.data.decode import decode_image
        from sightwise.privacy.faces import blur_faces

        image = decode_image(stripped.data)
        found = detector.detect(image)
        result["faces"] = len(found)
        if found:
            blurred = blur_faces(image, found, mode=faces)
            result.update(lossless=False, note=f"{len(found)} face(s) {faces.replace('blur', 'blurr')}ed, "
                          "re-encoded")
            return encode_like(blurred, stripped.format, data), result
    return stripped.data, result


def encode_like(image, fmt: str, original: bytes) -> bytes:
    """Encode `image` in the original's format, as close to its quality as Pillow can."""
    from PIL import Image, JpegImagePlugin

    buf = io.BytesIO()
    with Image.open(io.BytesIO(original)) as src:
        icc = src.info.get("icc_profile")
        extra = {"icc_profile": icc} if icc else {}
        if fmt == "JPEG":
            sampling = JpegImagePlugin.get_sampling(src)
            image.save(buf, "JPEG", quality=95, subsampling=max(sampling, 0), **extra)
        elif fmt == "WEBP":
            lossless = original[12:16] == b"VP8L" or b"VP8L" in original[:64]
            image.save(buf, "WEBP", lossless=lossless, quality=95 if not lossless else 100,
                       **extra)
        elif fmt == "TIFF":
            image.save(buf, "TIFF", compression="tiff_lzw", **extra)
        else:
            image.save(buf, fmt, **extra)
    return buf.getvalue()


def _count(summary: dict, rel: str, result: dict) -> None:
    summary["written"] += 1
    if result["format"] == "DICOM":
        summary["dicom"] += 1
    elif result.get("lossless"):
        summary["lossless"] += 1
    else:
        summary["re_encoded"].append(rel)
    summary["faces_found"] += result.get("faces", 0)
    if result.get("note"):
        summary["notes"][rel] = result["note"]


def _validate(src: Path, out: Path, faces: str | None, profile: str, mapping: Path | None):
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if profile not in PROFILES:
        raise ValueError(f"unknown DICOM profile {profile!r}: only 'basic' (PS3.15 E.1 Basic "
                         "Application Level Confidentiality Profile) is implemented")
    if faces not in (None, "blur", "box"):
        raise ValueError(f"faces must be 'blur' or 'box', not {faces!r}")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or (src.is_dir() and o in s.parents):
        raise DataError(f"{out}: the clean copy must be outside the source (and not contain it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not empty; choose a new or empty folder")
    if mapping is not None and (o in mapping.resolve().parents or mapping.resolve() == o):
        raise DataError(f"{mapping}: the mapping re-identifies patients; keep it outside "
                        "the clean copy")
