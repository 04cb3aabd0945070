"""Claims: (1) MTCNN finds the faces in a small hand-labelled photo set with few false
positives; (2) stripping metadata without re-encoding is faster than the usual Pillow
decode + re-save, and loses no pixel; (3) DICOM de-identification changes every Basic
Profile attribute present in pydicom's test files and no pixel.

    python bench/privacy.py [--photos 60] [--no-faces] [--no-lfw] [--threads N] [--figure PNG]
    python bench/privacy.py --demo-data DIR     # the docs' walk-through data set only

Face set, labelled by hand (number of faces per image), all offline:
scikit-image's bundled public-domain photos and test images, matplotlib's sample
photos, and scikit-image's `lfw_subset` (100 Labeled-Faces-in-the-Wild crops and 100
non-face crops, 25 x 25 px, upscaled 4x for the detector). A detection is counted as
found when the image has a face left to find, else as a false positive.

Scrub speed: `--photos` JPEGs (1024 x 768, quality 90, EXIF with GPS) in memory, ours
(`strip_metadata`) vs the reference (Pillow open + save without metadata, quality 95),
then `scrub_dataset` end to end on disk (fsync'ed audit record per file). The last line
is `ratio=<ours / reference images per second>`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# (file in skimage's data folder or matplotlib's sample_data, faces in it, by eye)
LABELLED = [
    ("skimage:astronaut.png", 1), ("skimage:camera.png", 1), ("mpl:grace_hopper.jpg", 1),
    ("skimage:chelsea.png", 0), ("skimage:coffee.png", 0), ("skimage:coins.png", 0),
    ("skimage:rocket.jpg", 0), ("skimage:hubble_deep_field.jpg", 0), ("skimage:ihc.png", 0),
    ("skimage:motorcycle_left.png", 0), ("skimage:retina.jpg", 0), ("skimage:brick.png", 0),
    ("skimage:grass.png", 0), ("skimage:gravel.png", 0), ("skimage:horse.png", 0),
    ("skimage:page.png", 0), ("skimage:text.png", 0), ("skimage:moon.png", 0),
    ("skimage:logo.png", 0), ("skimage:cell.png", 0), ("skimage:clock_motion.png", 0),
    ("skimage:microaneurysms.png", 0), ("mpl:Minduka_Present_Blue_Pack.png", 0),
    ("mpl:logo2.png", 0),
]
DICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
               "examples_ybr_color.dcm", "examples_overlay.dcm", "rtplan.dcm",
               "SC_rgb_rle_2frame.dcm", "liver_1frame.dcm", "693_J2KI.dcm"]


def _open(ref: str) -> Image.Image:
    import matplotlib
    import skimage.data

    where, name = ref.split(":", 1)
    folder = skimage.data.data_dir if where == "skimage" else os.path.join(
        matplotlib.get_data_path(), "sample_data")
    with Image.open(os.path.join(folder, name)) as im:
        return im.convert("RGB")


def faces_bench(detector, lfw: bool, figure: str | None = None) -> None:
    print("## face detection (MTCNN, facenet-pytorch 2.5.3, min score 0.9)")
    print("| image | faces (by eye) | found | false positives | seconds |")
    print("|---|---|---|---|---|")
    tot = {"faces": 0, "found": 0, "fp": 0, "fp_images": 0, "secs": 0.0}
    shown = []
    for ref, n in LABELLED:
        image = _open(ref)
        t0 = time.perf_counter()
        faces = detector.detect(image)
        dt = time.perf_counter() - t0
        k = len(faces)
        if n or k:
            shown.append((ref.split(":")[1], image, faces, n))
        found, fp = min(k, n), max(0, k - n)
        tot["faces"] += n
        tot["found"] += found
        tot["fp"] += fp
        tot["fp_images"] += fp > 0
        tot["secs"] += dt
        print(f"| {ref.split(':')[1]} {image.size[0]}x{image.size[1]} | {n} | {found} | {fp} | "
              f"{dt:.2f} |")
    print(f"photos: recall {tot['found']}/{tot['faces']}, false positives {tot['fp']} in "
          f"{tot['fp_images']} of {sum(1 for _, n in LABELLED if n == 0)} face-free images, "
          f"{tot['secs'] / len(LABELLED):.2f} s/image")
    if lfw:
        lfw_bench(detector)
    if figure:
        faces_figure(shown, detector, figure)


def faces_figure(shown, detector, path: str) -> None:
    """Photos with faces (or detections): boxes found, and the astronaut after blurring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sightwise.core import atomic_write_bytes
    from sightwise.privacy.faces import blur_faces

    astro = next(image for name, image, _, _ in shown if name == "astronaut.png")
    panels = shown + [("astronaut.png, blurred", blur_faces(astro, detector=detector), [], 0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, image, faces, n) in zip(axes, panels, strict=True):
        ax.imshow(image)
        for f in faces:
            x0, y0, x1, y1 = f.box
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2,
                                       color="lime" if n else "red"))
        ax.set_title(f"{name}\n{len(faces)} found, {n} by eye", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    print(f"figure: {path}")


def lfw_bench(detector) -> None:
    import skimage.data

    crops = np.load(os.path.join(skimage.data.data_dir, "lfw_subset.npy"))  # 100 faces, 100 not
    hits = [len(detector.detect(_upscale(c))) > 0 for c in crops]
    recall, fp = float(np.mean(hits[:100])), int(np.sum(hits[100:]))
    print(f"lfw_subset (25x25 crops upscaled to 100x100): recall {sum(hits[:100])}/100 = "
          f"{recall:.2f}, false positives {fp}/100 non-face crops")


def _upscale(crop: np.ndarray) -> Image.Image:
    gray = Image.fromarray(np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8))
    return gray.resize((100, 100), Image.Resampling.BICUBIC).convert("RGB")


def make_photos(n: int) -> list[bytes]:
    sources = [_open(r) for r, _ in LABELLED[:8]]
    out = []
    for i in range(n):
        img = sources[i % len(sources)].resize((1024, 768), Image.Resampling.BILINEAR)
        exif = img.getexif()
        exif[0x0132], exif[0x013B] = "2024:05:06 07:08:09", f"photographer {i}"
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, float(i)), "E", (13.0, 24.0, 0.0)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, exif=exif)
        out.append(buf.getvalue())
    return out


def reference_strip(data: bytes) -> bytes:
    """What most scripts do: decode and save again without the metadata."""
    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def scrub_bench(n: int) -> float:
    from sightwise.privacy.scrub import scrub_dataset
    from sightwise.privacy.strip import strip_metadata

    photos = make_photos(n)
    t0 = time.perf_counter()
    ours = [strip_metadata(p) for p in photos]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [reference_strip(p) for p in photos]
    t_ref = time.perf_counter() - t0
    same = sum(np.array_equal(np.asarray(Image.open(io.BytesIO(a))),
                              np.asarray(Image.open(io.BytesIO(b)))) for a, b in zip(ours, photos,
                                                                                   strict=True))
    ref_err = np.mean([np.abs(np.asarray(Image.open(io.BytesIO(a)), np.int16) -
                              np.asarray(Image.open(io.BytesIO(b)), np.int16)).mean()
                       for a, b in zip(ref, photos, strict=True)])
    print(f"\n## scrub speed ({n} JPEGs 1024x768, in memory)")
    print(f"ours (segment copy): {n / t_ours:.1f} images/s, decoded pixels identical in "
          f"{same}/{n}")
    print(f"reference (Pillow decode + re-save q95): {n / t_ref:.1f} images/s, mean abs pixel "
          f"change {ref_err:.2f} /255")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i, p in enumerate(photos):
            (src / f"{i:04d}.jpg").write_bytes(p)
        t0 = time.perf_counter()
        summary = scrub_dataset(src, Path(tmp) / "clean", progress=False)
        dt = time.perf_counter() - t0
    print(f"scrub_dataset on disk (read, strip, atomic write, fsync'ed audit record): "
          f"{summary['written'] / dt:.1f} images/s")
    return (n / t_ours) / (n / t_ref)


def audit_bench(n: int = 300) -> None:
    from sightwise.privacy.audit import AuditLog, verify_audit

    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(Path(tmp) / "audit.jsonl")
        t0 = time.perf_counter()
        for i in range(n):
            log.append("predict", client="127.0.0.1", token="t", model_version="m/1",
                       image_sha256=f"{i:064x}", result={"label": "ok", "p": 0.9})
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = verify_audit(log.path)
        dv = time.perf_counter() - t0
    print(f"\n## audit log\nappend (lock, fsync per record): {n / dt:.0f} records/s; "
          f"verify: {report.records / dv:.0f} records/s (ok={report.ok})")


def dicom_bench() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    from sightwise.privacy.dicom_deid import Deidentifier, deidentify_bytes

    deid = Deidentifier()
    rows: dict[str, list] = {}
    print("\n## DICOM de-identification (pydicom test files)")
    print("| file | attributes changed | PixelData sha256 equal | pixel_array equal |")
    print("|---|---|---|---|")
    t0, count = time.perf_counter(), 0
    for name in DICOM_FILES:
        data = open(get_testdata_file(name, download=False), "rb").read()
        out, changes = deidentify_bytes(data, deid)
        count += 1
        a, b = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(out))
        same_bytes = _sha(a.get("PixelData")) == _sha(b.get("PixelData"))
        try:
            same_pixels = str(bool(np.array_equal(a.pixel_array, b.pixel_array)))
        except Exception:
            same_pixels = "n/a (no pixel data)" if "PixelData" not in a else "no decoder"
        print(f"| {name} | {len(changes)} | {same_bytes} | {same_pixels} |")
        private = [c for c in changes if int(c.tag[1:5], 16) % 2 == 1]
        for c in changes:
            if c not in private:  # private attributes: counted, not listed one by one
                rows.setdefault(f"{c.tag} {c.path.split('.')[-1]}", [c, 0])[1] += 1
        rows.setdefault("(odd group) private", [_private_row(private), 0])[1] += bool(private)
    rate = count / (time.perf_counter() - t0)
    print(f"\n{rate:.1f} files/s; one example per attribute (before -> after), files with it:")
    print("| tag | attribute | action | before | after | files |")
    print("|---|---|---|---|---|---|")
    for key in sorted(rows):
        c, n = rows[key]
        print(f"| {c.tag} | {c.path.split('.')[-1]} | {c.action} | {_cut(c.before)} | "
              f"{_cut(c.after)} | {n} |")


def _private_row(private):
    from sightwise.privacy.dicom_deid import Change

    return Change("private attributes", "(gggg,xxxx) odd", "removed", "vendor data", "")


def demo_data(folder: str, per_class: int = 12) -> None:
    """A small DICOM data set for the docs' walk-through: classes ct/ (from CT_small) and
    mr/ (from MR_small), each image flipped, shifted and noised, new instance UIDs, the
    original patient names, dates and private tags (what `privacy check` should find)."""
    import copy

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(0)
    for cls, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        base = pydicom.dcmread(get_testdata_file(name, download=False))
        out = Path(folder) / cls
        out.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ds = copy.deepcopy(base)
            arr = ds.pixel_array.astype(np.int32)
            arr = np.roll(arr[:, ::-1] if i % 2 else arr, int(rng.integers(-8, 9)), axis=0)
            arr = arr + rng.normal(0, 20, arr.shape).astype(np.int32)
            info = np.iinfo(ds.pixel_array.dtype)
            ds.PixelData = np.clip(arr, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            ds.save_as(out / f"{cls}_{i:03d}.dcm")
    print(f"demo data: {folder} ({2 * per_class} DICOM files, 2 classes)")


def _sha(value) -> str:
    return hashlib.sha256(value or b"").hexdigest()


def _cut(text: str, n: int = 28) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--no-faces", action="store_true")
    ap.add_argument("--no-lfw", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--demo-data", default=None, help="Only write the walk-through's small "
                    "DICOM data set into this folder.")
    ap.add_argument("--figure", default="docs/figures/privacy_faces.png",
                    help="Where to draw the detections ('' for none).")
    a = ap.parse_args()
    if a.demo_data:
        return demo_data(a.demo_data)
    print(f"cores={os.cpu_count()}")
    if not a.no_faces:
        from sightwise.privacy.faces import FaceDetector

        faces_bench(FaceDetector(threads=a.threads), lfw=not a.no_lfw, figure=a.figure)
    dicom_bench()
    audit_bench()
    ratio = scrub_bench(a.photos)
    print(f"ratio={ratio:.1f}")


if __name__ == "__main__":
    main()
