"""Seeded stratified splits, leakage checks and the manifest (sightwise.data.splits)."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sightwise.data.datasets import load_dataset
from sightwise.data.splits import (
    assign_splits,
    drop_leakage,
    find_label_conflicts,
    find_leakage,
    manifest_rows,
    write_manifest,
)
from sightwise.types import SPLITS

CLASSES = {"a": 40, "b": 20, "c": 60}


@pytest.fixture
def unsplit(tmp_path, image_folder_factory):
    return load_dataset(image_folder_factory(tmp_path / "d", CLASSES))


@pytest.fixture
def train_test(tmp_path, image_folder_factory):
    root = tmp_path / "tt"
    image_folder_factory(root / "train", {"a": 40, "b": 40})
    image_folder_factory(root / "test", {"a": 10, "b": 10}, seed=7)
    return load_dataset(root)


def _splits(ds) -> list:
    return [s.split for s in ds.samples]


def test_stratified_70_15_15(unsplit):
    ds = assign_splits(unsplit, seed=0)
    assert [s.source for s in ds.samples] == [s.source for s in unsplit.samples]  # same order
    assert [s.label for s in ds.samples] == [s.label for s in unsplit.samples]
    assert set(_splits(ds)) == set(SPLITS)
    counts = Counter((ds.classes[s.label], s.split) for s in ds.samples)
    for cls, n in CLASSES.items():
        for split, frac in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
            assert abs(counts[cls, split] - frac * n) <= 1, (cls, split, counts)
    assert ds.notes == ["made a stratified 70%/15%/15% split (seed 0)"]
    assert all(s.split is None for s in unsplit.samples)  # the input is not modified


def test_same_seed_same_split_other_seed_other_split(unsplit):
    first, again = assign_splits(unsplit, seed=0), assign_splits(unsplit, seed=0)
    assert _splits(first) == _splits(again)
    other = assign_splits(unsplit, seed=1)
    assert _splits(other) != _splits(first)
    assert Counter(_splits(other)) == Counter(_splits(first))  # same sizes, other members


def test_custom_fractions(unsplit):
    ds = assign_splits(unsplit, seed=3, val=0.1, test=0.2)
    n = len(ds.samples)
    got = Counter(_splits(ds))
    assert abs(got["val"] - 0.1 * n) <= 1 and abs(got["test"] - 0.2 * n) <= 1


def test_given_splits_are_never_moved(train_test):
    before = {s.source: s.split for s in train_test.samples}
    ds = assign_splits(train_test, seed=0)
    for s in ds.samples:
        if before[s.source] == "test":
            assert s.split == "test"
        else:
            assert s.split in ("train", "val")  # val comes out of train only
    assert Counter(_splits(ds))["test"] == 20


def test_missing_val_is_carved_from_train_stratified(train_test):
    ds = assign_splits(train_test, seed=0)
    counts = Counter((ds.classes[s.label], s.split) for s in ds.samples)
    total = len(ds.samples)  # 100: val is 15% of the whole, i.e. 15 of the 80 train
    assert counts["a", "val"] + counts["b", "val"] == pytest.approx(0.15 * total, abs=1)
    assert abs(counts["a", "val"] - counts["b", "val"]) <= 1  # stratified: 7.5 each
    assert counts["a", "test"] == counts["b", "test"] == 10
    assert "carved a stratified validation split from train (seed 0)" in ds.notes
    assert _splits(assign_splits(train_test, seed=0)) == _splits(ds)


def test_complete_splits_are_kept_as_they_are(tmp_path, image_folder_factory):
    root = tmp_path / "full"
    for k, split in enumerate(SPLITS):
        image_folder_factory(root / split, {"a": 3, "b": 3}, seed=k)
    ds = load_dataset(root)
    out = assign_splits(ds, seed=0)
    assert _splits(out) == _splits(ds) and out.notes == ds.notes


def test_partially_split_csv_leaves_no_sample_unsplit(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "imgs", {"a": 10, "b": 10})
    files = sorted(root.rglob("*.png"))
    split_of = ["train"] * 6 + ["test"] * 2 + [""] * 2  # two rows of each class unsplit
    rows = [f"{f.relative_to(tmp_path).as_posix()},{f.parent.name},{split_of[i % 10]}"
            for i, f in enumerate(files)]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    ds = assign_splits(load_dataset(tmp_path / "m.csv"), seed=0)
    assert all(s.split in SPLITS for s in ds.samples), Counter(_splits(ds))


def test_tiny_classes_still_get_a_split(tmp_path, image_folder_factory):
    ds = load_dataset(image_folder_factory(tmp_path / "t", {"a": 1, "b": 9, "c": 10}))
    out = assign_splits(ds, seed=0)
    assert all(s.split in SPLITS for s in out.samples)


# --- leakage -----------------------------------------------------------------------------


@pytest.fixture
def leaky(tmp_path, image_folder_factory):
    """train/val/test where train/a/a_000.png is copied into test and into val."""
    root = tmp_path / "leaky"
    image_folder_factory(root / "train", {"a": 4, "b": 4})
    image_folder_factory(root / "val", {"a": 2, "b": 2}, seed=1)
    image_folder_factory(root / "test", {"a": 2, "b": 2}, seed=2)
    shutil.copy(root / "train/a/a_000.png", root / "test/a/copy_in_test.png")
    shutil.copy(root / "train/a/a_000.png", root / "val/b/copy_in_val.png")  # even relabelled
    shutil.copy(root / "test/b/b_000.png", root / "val/b/copy_of_test.png")
    return root


def test_find_leakage_finds_byte_identical_files_across_splits(leaky):
    ds = load_dataset(leaky)
    groups = find_leakage(ds)
    assert len(groups) == 2
    by_hash = {g["sha256"]: sorted(tuple(i) for i in g["items"]) for g in groups}
    h_train = hashlib.sha256((leaky / "train/a/a_000.png").read_bytes()).hexdigest()
    h_test = hashlib.sha256((leaky / "test/b/b_000.png").read_bytes()).hexdigest()
    assert by_hash[h_train] == sorted([
        (str(leaky / "train/a/a_000.png"), "train"),
        (str(leaky / "test/a/copy_in_test.png"), "test"),
        (str(leaky / "val/b/copy_in_val.png"), "val"),
    ])
    assert by_hash[h_test] == sorted([
        (str(leaky / "test/b/b_000.png"), "test"),
        (str(leaky / "val/b/copy_of_test.png"), "val"),
    ])


def test_identical_files_with_different_labels_are_named_as_labelling_errors(leaky):
    ds = load_dataset(leaky)
    groups = find_label_conflicts(ds)
    assert len(groups) == 1  # train/a/a_000.png is also val/b/copy_in_val.png
    assert sorted(tuple(i) for i in groups[0]["items"]) == sorted([
        (str(leaky / "train/a/a_000.png"), "a", "train"),
        (str(leaky / "test/a/copy_in_test.png"), "a", "test"),
        (str(leaky / "val/b/copy_in_val.png"), "b", "val"),
    ])


def test_no_leakage_in_a_clean_split(unsplit):
    assert find_leakage(assign_splits(unsplit, seed=0)) == []


def test_drop_leakage_keeps_the_train_copy(leaky):
    ds = load_dataset(leaky)
    out, dropped = drop_leakage(ds)
    assert dropped == 3 and len(out.samples) == len(ds.samples) - 3
    kept = {Path(s.source).relative_to(leaky).as_posix() for s in out.samples}
    assert "train/a/a_000.png" in kept
    assert "test/a/copy_in_test.png" not in kept and "val/b/copy_in_val.png" not in kept
    # no train copy: the val one (val before test) is kept
    assert "val/b/copy_of_test.png" in kept and "test/b/b_000.png" not in kept
    assert find_leakage(out) == []
    order = [s.source for s in ds.samples]
    assert [s.source for s in out.samples] == [p for p in order if p in {s.source for s in out.samples}]


def test_drop_leakage_leaves_duplicates_within_one_split_alone(tmp_path, image_folder_factory):
    root = tmp_path / "dups"
    image_folder_factory(root / "train", {"a": 3, "b": 3})
    image_folder_factory(root / "test", {"a": 2, "b": 2}, seed=3)
    shutil.copy(root / "train/a/a_000.png", root / "train/a/a_again.png")
    ds = load_dataset(root)
    assert find_leakage(ds) == []
    out, dropped = drop_leakage(ds)
    assert dropped == 0 and len(out.samples) == len(ds.samples)


# --- manifest ----------------------------------------------------------------------------


def test_write_manifest_returns_the_sha256_of_the_written_bytes(unsplit, tmp_path):
    ds = assign_splits(unsplit, seed=0)
    path = tmp_path / "manifest.csv"
    digest = write_manifest(ds, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not path.with_suffix(".csv.tmp").exists()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label", "split", "sha256"]
    assert rows[1:] == manifest_rows(ds)
    assert len(rows) == 1 + len(ds.samples)
    assert [r[0] for r in rows[1:]] == sorted(r[0] for r in rows[1:])
    by_path = {r[0]: r for r in rows[1:]}
    for s in ds.samples:
        rel = Path(s.source).relative_to(ds.root).as_posix()
        assert by_path[rel][1:] == [ds.classes[s.label], s.split, s.sha256]


def test_manifest_hash_does_not_depend_on_the_mount_point(tmp_path, image_folder_factory):
    first = image_folder_factory(tmp_path / "mount1" / "data", {"a": 8, "b": 6})
    second = shutil.copytree(first, tmp_path / "elsewhere" / "deeper" / "copy")
    h1 = write_manifest(assign_splits(load_dataset(first), seed=5), tmp_path / "m1.csv")
    h2 = write_manifest(assign_splits(load_dataset(second), seed=5), tmp_path / "m2.csv")
    assert h1 == h2
    assert (tmp_path / "m1.csv").read_bytes() == (tmp_path / "m2.csv").read_bytes()
    assert str(tmp_path) not in (tmp_path / "m1.csv").read_text()


def test_manifest_hash_changes_when_a_file_changes(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "d", {"a": 4, "b": 4})
    h1 = write_manifest(assign_splits(load_dataset(root)), tmp_path / "m.csv")
    (root / "a" / "a_000.png").write_bytes((root / "b" / "b_000.png").read_bytes())
    h2 = write_manifest(assign_splits(load_dataset(root)), tmp_path / "m.csv")
    assert h1 != h2


def test_manifest_of_npz_names_the_file_not_its_folder(tmp_path):
    import numpy as np

    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "med.npz",
                 train_images=np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3),
                 train_labels=np.array([[0], [1], [0], [1]]),
                 test_images=np.zeros((2, 3, 3), np.uint8), test_labels=np.array([[0], [1]]))
    h = [write_manifest(load_dataset(tmp_path / f / "med.npz"), tmp_path / f"{f}.csv")
         for f in ("one", "two")]
    assert h[0] == h[1]
    assert "npz://med.npz#train/0" in (tmp_path / "one.csv").read_text()
