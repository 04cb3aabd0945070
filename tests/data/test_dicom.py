"""DICOM input (sightwise.data.dicom through decode_image), against pydicom's own pixel
arrays and windowing, hand-worked windows, and lossless codecs that must give the same
pixels. pydicom's bundled test files are read offline (get_testdata_file never downloads
the ones that ship inside the package)."""

from __future__ import annotations

import hashlib
import io
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_windowing  # noqa: E402

from sightwise.data.datasets import load_dataset  # noqa: E402
from sightwise.data.decode import decode_image  # noqa: E402
from sightwise.data.dicom import decode_dicom  # noqa: E402
from sightwise.errors import ImageDecodeError  # noqa: E402


def _file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _gray(img) -> np.ndarray:
    arr = np.asarray(img)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


def _synthetic(pixels: np.ndarray, **attrs) -> bytes:
    """MR_small with its pixels replaced (16-bit unsigned) and attributes set."""
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.set_pixel_data(pixels.astype(np.uint16), "MONOCHROME2", 16)
    for key in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if key in ds:
            del ds[key]
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _supported(name: str) -> bool:
    try:
        _ = pydicom.dcmread(_file(name)).pixel_array
    except Exception:
        return False
    return True


def test_file_window_matches_pydicom_windowing():
    """MR_small has Window Center 600 / Width 1600: same as pydicom's LINEAR windowing,
    rescaled from its signed 16-bit output range to 0..255."""
    path = _file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    ref = apply_windowing(apply_modality_lut(ds.pixel_array, ds).astype(np.float64), ds)
    lo, hi = -(2 ** 15), 2 ** 15 - 1  # signed pixels: pydicom's output range
    expected = np.round((ref - lo) / (hi - lo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_gray(decode_image(path)), expected)


def test_rescale_then_window_hand_worked():
    """Stored x, slope 2, intercept -1000 -> HU = 2x - 1000; window C=0, W=1001:
    HU <= -500.5 -> 0, HU > 499.5 -> 255, else ((HU + 0.5) / 1000 + 0.5) * 255."""
    stored = np.array([[0, 250, 500, 625, 750, 1000]], dtype=np.uint16)
    data = _synthetic(stored, RescaleSlope="2", RescaleIntercept="-1000", WindowCenter="0",
                      WindowWidth="1001")
    # HU: -1000, -500, 0, 250, 500, 1000
    expected = [0, round((-499.5 / 1000 + 0.5) * 255), round(0.5005 * 255),
                round((250.5 / 1000 + 0.5) * 255), 255, 255]
    assert _gray(decode_image(data))[0].tolist() == expected


def test_percentile_window_without_a_file_window():
    """No Window Center: the 0.5th..99.5th percentile window (np.percentile, linear)."""
    ramp = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    out = _gray(decode_image(_synthetic(ramp)))
    lo, hi = 0.005 * 9999, 0.995 * 9999  # numpy's linear percentile of 0..9999
    for value in (0, 40, 60, 5000, 9900, 9999):
        want = round(min(max((value - lo) / (hi - lo), 0.0), 1.0) * 255)
        assert out.flat[value] == want, value


def test_monochrome1_is_inverted():
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    buf = io.BytesIO()
    ds.save_as(buf)
    normal = _gray(decode_image(_file("MR_small.dcm")))
    np.testing.assert_array_equal(_gray(decode_image(buf.getvalue())), 255 - normal)


def test_rgb_is_passed_through_unchanged():
    path = _file("examples_rgb_color.dcm")
    np.testing.assert_array_equal(np.asarray(decode_image(path)),
                                  pydicom.dcmread(path).pixel_array)


def test_sixteen_bit_rgb_is_scaled_from_its_bit_depth():
    path = _file("SC_rgb_rle_16bit.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(np.asarray(decode_image(path)),
                                  np.round(raw / 65535 * 255).astype(np.uint8))


def test_multiframe_takes_the_chosen_frame_and_the_middle_by_default():
    path = _file("SC_rgb_rle_2frame.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(np.asarray(decode_dicom(path, frame=0)), frames[0])
    np.testing.assert_array_equal(np.asarray(decode_image(path)), frames[1])  # 2 // 2
    with pytest.raises(ImageDecodeError, match="frame 2 out of range: the file has 2"):
        decode_dicom(path, frame=2)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_lossless_encodings_decode_to_the_same_pixels(name):
    if not _supported(name):
        pytest.skip(f"no installed decoder for {name} (pip install 'sightwise[dicom]')")
    np.testing.assert_array_equal(np.asarray(decode_image(_file(name))),
                                  np.asarray(decode_image(_file("MR_small.dcm"))))


def test_header_size_reads_rows_and_columns_without_pixels():
    from sightwise.data.dicom import header_size

    assert header_size(_file("JPEG2000.dcm")) == decode_image(_file("JPEG2000.dcm")).size
    assert header_size(open(_file("CT_small.dcm"), "rb").read()) == (128, 128)


def test_path_and_bytes_agree_and_dicom_folders_load_as_datasets(tmp_path):
    src = _file("CT_small.dcm")
    data = open(src, "rb").read()
    np.testing.assert_array_equal(np.asarray(decode_image(src)), np.asarray(decode_image(data)))
    for cls in ("ct", "mr"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            name = "CT_small.dcm" if cls == "ct" else "MR_small.dcm"
            (tmp_path / cls / f"{cls}{i}.dcm").write_bytes(open(_file(name), "rb").read())
    ds = load_dataset(tmp_path)
    assert sorted(ds.classes) == ["ct", "mr"]
    assert sorted(s.source.replace("\\", "/").split("/")[-1] for s in ds.samples) == [
        "ct0.dcm", "ct1.dcm", "mr0.dcm", "mr1.dcm"]


def _bad_inputs(tmp_path):
    good = open(_file("CT_small.dcm"), "rb").read()
    fake = bytes(128) + b"DICM" + b"this is not a DICOM data set" * 20
    # Pixel Data's value starts after its tag, "OW", 2 reserved bytes and a 4-byte length.
    pixels_at = good.find(b"\xe0\x7f\x10\x00OW") + 12
    return {
        "no pixel data": (_file("rtplan.dcm"), "no pixel data"),
        "cut in the header": (good[:3000], "truncated DICOM file: a CT Image Storage"),
        "cut in the pixels": (good[:20000], rf"truncated DICOM pixel data \({20000 - pixels_at:,} "
                              r"of 32,768 bytes\)"),
        "short pixel data": (_file("MR_truncated.dcm"), "truncated"),
        "claims to be DICOM": (fake, "DICOM"),
        "png named .dcm": (tmp_path / "x.dcm", "DICOM"),
    }


def test_bad_dicom_gets_a_clear_error_and_loses_nothing(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "x.dcm", "PNG")
    for label, (source, pattern) in _bad_inputs(tmp_path).items():
        before = hashlib.sha256(source if isinstance(source, bytes) else
                                open(source, "rb").read()).hexdigest()
        with pytest.raises(ImageDecodeError, match=pattern):
            decode_image(source)
        after = hashlib.sha256(source if isinstance(source, bytes) else
                               open(source, "rb").read()).hexdigest()
        assert before == after, label


def test_missing_pydicom_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(ImageDecodeError, match=r"pip install 'sightwise\[dicom\]'"):
        decode_image(open(_file("CT_small.dcm"), "rb").read())
