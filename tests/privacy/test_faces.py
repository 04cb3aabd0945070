"""Face detection and blurring with MTCNN on scikit-image's public-domain photos: the
astronaut (Eileen Collins, one face; box hand-labelled from the image) and chelsea (a
cat, no face). Skipped without torch + facenet-pytorch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sightwise.privacy.faces import FaceDetector, blur_faces, faces_available

pytestmark = pytest.mark.skipif(not faces_available(),
                                reason="needs torch and facenet-pytorch (sightwise[faces])")
skdata = pytest.importorskip("skimage.data")

# Hand-labelled: the face from hairline to chin, ear to ear, in the 512 x 512 astronaut.
ASTRONAUT_FACE = (175, 55, 275, 180)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(threads=2)


def test_face_in_astronaut_is_found_and_gone_after_blurring(detector):
    image = Image.fromarray(skdata.astronaut())
    faces = detector.detect(image)
    assert len(faces) == 1 and faces[0].score > 0.99
    assert _iou(faces[0].box, ASTRONAUT_FACE) > 0.5
    for mode in ("blur", "box"):
        clean = blur_faces(image, faces, mode=mode)
        assert detector.detect(clean) == [], mode
        changed = np.any(np.asarray(clean) != np.asarray(image), axis=2)
        ys, xs = np.nonzero(changed)  # only the (padded) face box was touched
        assert xs.min() >= 150 and xs.max() <= 300 and ys.min() >= 25 and ys.max() <= 210


def test_no_face_in_chelsea_the_cat(detector):
    assert detector.detect(Image.fromarray(skdata.chelsea())) == []


def test_scrub_blurs_faces_and_leaves_other_photos_lossless(tmp_path, detector):
    from sightwise.privacy.check import check_dataset
    from sightwise.privacy.scrub import scrub_dataset

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skdata.astronaut()).resize((256, 256)).save(src / "person.jpg", quality=92)
    Image.fromarray(skdata.chelsea()).resize((225, 150)).save(src / "cat.png")
    summary = scrub_dataset(src, tmp_path / "out", faces="blur", detector=detector,
                            progress=False)
    assert summary["faces_found"] == 1 and summary["re_encoded"] == ["person.jpg"]
    assert (tmp_path / "out" / "cat.png").read_bytes() == (src / "cat.png").read_bytes()
    report = check_dataset(tmp_path / "out", detector=detector, progress=False)
    assert [f for e in report["files"] for f in e["findings"]] == []
    before = check_dataset(src, detector=detector, progress=False)
    assert [e["path"] for e in before["files"] if e["findings"]] == ["person.jpg"]
