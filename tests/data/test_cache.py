"""The decoded-image cache (sightwise.data.cache): bad files are skipped with reasons,
everything that is kept stays aligned with its label and split."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sightwise.data.cache import ImageCache, build_cache, check_usable, load_one
from sightwise.data.datasets import load_dataset
from sightwise.data.decode import decode_image
from sightwise.data.preprocess import Preprocessing, resize_rgb
from sightwise.data.splits import assign_splits
from sightwise.errors import DataError
from sightwise.types import Sample

PRE = Preprocessing(size=16, interpolation="bilinear")


def _jpeg_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder_with_bad_files(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "d", {"a": 4, "b": 4, "c": 4})
    (root / "a" / "a_010_truncated.jpg").write_bytes(_jpeg_bytes()[:800])
    (root / "b" / "b_010_empty.png").write_bytes(b"")
    (root / "c" / "c_010_text.jpg").write_text("not a photo")
    return root


def test_build_cache_skips_bad_files_with_reasons(folder_with_bad_files):
    ds = assign_splits(load_dataset(folder_with_bad_files), seed=0)
    assert len(ds.samples) == 15
    cache, skipped = build_cache(ds, PRE, progress=False)
    reasons = {s.source.rsplit("/", 1)[1]: s.reason for s in skipped}
    assert set(reasons) == {"a_010_truncated.jpg", "b_010_empty.png", "c_010_text.jpg"}
    assert "truncated" in reasons["a_010_truncated.jpg"]
    assert reasons["b_010_empty.png"] == "empty file"
    assert reasons["c_010_text.jpg"] == "not an image (unrecognised format)"
    assert cache.images.shape == (12, 16, 16, 3) and cache.images.dtype == np.uint8


def test_kept_images_stay_aligned_with_labels_and_splits(folder_with_bad_files):
    ds = assign_splits(load_dataset(folder_with_bad_files), seed=0)
    cache, skipped = build_cache(ds, PRE, workers=3, progress=False)
    bad = {s.source for s in skipped}
    expected = [s for s in ds.samples if s.source not in bad]
    assert cache.samples == expected  # dataset order, bad ones removed
    assert cache.labels.tolist() == [s.label for s in expected]
    assert cache.labels.dtype == np.int64
    assert cache.splits.tolist() == [s.split for s in expected]
    for i, s in enumerate(expected):  # reference: decode + resize one at a time
        assert np.array_equal(cache.images[i], resize_rgb(decode_image(s.source), PRE))
    for split in ("train", "val", "test"):
        images, labels = cache.subset(split)
        idx = cache.indices(split)
        assert np.array_equal(images, cache.images[idx]) and np.array_equal(labels, cache.labels[idx])
        assert all(expected[i].split == split for i in idx)


def test_worker_count_does_not_change_the_result(tmp_image_folder):
    ds = load_dataset(tmp_image_folder)
    one, _ = build_cache(ds, PRE, workers=1, progress=False)
    four, _ = build_cache(ds, PRE, workers=4, progress=False)
    assert np.array_equal(one.images, four.images) and one.samples == four.samples
    assert set(one.splits.tolist()) == {"train"}  # unsplit samples train


def test_memmap_cache_equals_the_in_memory_one(tmp_image_folder, tmp_path):
    ds = load_dataset(tmp_image_folder)
    mem, _ = build_cache(ds, PRE, progress=False)
    mapped, _ = build_cache(ds, PRE, memmap_dir=tmp_path / "run", memmap_bytes=0, progress=False)
    assert isinstance(mapped.images, np.memmap)
    assert (tmp_path / "run" / "cache.npy").is_file()
    assert np.array_equal(np.asarray(mapped.images), mem.images)
    assert np.array_equal(np.load(tmp_path / "run" / "cache.npy"), mem.images)


def test_npz_dataset_is_cached_from_its_arrays(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", train_images=train, train_labels=np.array([[0], [1], [0], [1], [0]]),
             test_images=test, test_labels=np.array([[1], [0], [1]]))
    ds = load_dataset(tmp_path / "m.npz")
    cache, skipped = build_cache(ds, PRE, progress=False)
    assert skipped == [] and cache.images.shape == (8, 16, 16, 3)
    for i, s in enumerate(ds.samples):
        assert np.array_equal(cache.images[i], load_one(s, PRE))
    ref = np.asarray(Image.fromarray(train[2]).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(cache.images[2], ref)
    assert cache.splits.tolist() == ["train"] * 5 + ["test"] * 3


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = buf.getvalue()
    body = struct.pack(">II", 30000, 30000) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF) + data[33:]


def test_a_decompression_bomb_is_skipped_not_fatal(tmp_image_folder):
    (tmp_image_folder / "apple" / "bomb.png").write_bytes(_bomb_png())
    cache, skipped = build_cache(load_dataset(tmp_image_folder), PRE, progress=False)
    assert [s.source.rsplit("/", 1)[1] for s in skipped] == ["bomb.png"]
    assert "decompression bomb" in skipped[0].reason
    assert len(cache.samples) == 36


# --- check_usable -------------------------------------------------------------------------


def _cache(labels, splits=None) -> ImageCache:
    n = len(labels)
    splits = splits or ["train"] * n
    samples = [Sample(f"x{i}.png", lab, sp, "")
               for i, (lab, sp) in enumerate(zip(labels, splits, strict=True))]
    return ImageCache(np.zeros((n, 8, 8, 3), np.uint8), np.array(labels, np.int64),
                      np.array(splits), samples)


def test_check_usable_accepts_two_classes_of_two():
    check_usable(_cache([0, 0, 1, 1]), ["cat", "dog"])


def test_check_usable_refuses_a_single_class():
    with pytest.raises(DataError, match=r"at least 2 classes.*found 1: \['cat'\]"):
        check_usable(_cache([0, 0, 0]), ["cat", "dog"])


def test_check_usable_names_the_class_with_one_usable_image():
    with pytest.raises(DataError, match=r"at least 2 usable images; too few: dog \(1\)$"):
        check_usable(_cache([0, 0, 1, 2, 2]), ["cat", "dog", "emu"])


def test_check_usable_refuses_a_train_split_with_one_class():
    cache = _cache([0, 0, 1, 1], ["train", "train", "test", "val"])
    with pytest.raises(DataError, match="training split holds fewer than 2 classes"):
        check_usable(cache, ["cat", "dog"])


def test_check_usable_after_bad_files_are_skipped(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "d", {"good": 3, "rare": 1})
    (root / "rare" / "broken.jpg").write_bytes(b"")
    cache, skipped = build_cache(load_dataset(root), PRE, progress=False)
    assert len(skipped) == 1
    with pytest.raises(DataError, match=r"rare \(1\)"):
        check_usable(cache, ["good", "rare"])
