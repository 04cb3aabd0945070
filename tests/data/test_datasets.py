"""Every dataset layout (sightwise.data.datasets) read from small folders the tests write."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sightwise.core import sha256_bytes
from sightwise.core import sha256_path as sha256_file
from sightwise.data.datasets import NPZ_SCHEME, load_dataset, read_npz_image
from sightwise.errors import DataError


def _by_class(ds) -> Counter:
    return Counter(ds.classes[s.label] for s in ds.samples)


def test_folder_per_class(tmp_image_folder):
    ds = load_dataset(tmp_image_folder)
    assert ds.layout == "folder-per-class"
    assert ds.classes == ["apple", "banana", "cherry"]
    assert _by_class(ds) == {"apple": 12, "banana": 12, "cherry": 12}
    assert all(s.split is None for s in ds.samples)
    assert ds.root == Path(tmp_image_folder)
    for s in ds.samples:  # label = the folder the file sits in
        assert Path(s.source).parent.name == ds.classes[s.label]
    assert ds.counts() == {"unsplit": {"apple": 12, "banana": 12, "cherry": 12}}


def test_sha256_equals_hashlib_of_the_file_bytes(tmp_image_folder):
    ds = load_dataset(tmp_image_folder)
    for s in ds.samples:
        data = Path(s.source).read_bytes()
        assert s.sha256 == hashlib.sha256(data).hexdigest()
        assert sha256_file(Path(s.source)) == s.sha256 == sha256_bytes(data)
    assert len({s.sha256 for s in ds.samples}) == len(ds.samples)  # fixture files differ


def test_loose_files_hidden_files_and_non_images_are_ignored(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "readme.txt").write_text("not an image")
    (root / "a" / ".hidden.png").write_bytes((root / "a" / "a_000.png").read_bytes())
    (root / "loose.png").write_bytes((root / "a" / "a_000.png").read_bytes())
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"] and len(ds.samples) == 4


def test_other_image_formats_are_found(tmp_path, image_folder_factory):
    root = tmp_path / "mixed"
    image_folder_factory(root, {"a": 2}, fmt="jpg")
    image_folder_factory(root, {"b": 2}, fmt="bmp")
    ds = load_dataset(root)
    assert _by_class(ds) == {"a": 2, "b": 2}


def test_split_folders_train_and_test_only(tmp_path, image_folder_factory):
    root = tmp_path / "st"
    image_folder_factory(root / "train", {"a": 5, "b": 4})
    image_folder_factory(root / "test", {"a": 2, "b": 3}, seed=1)
    ds = load_dataset(root)
    assert ds.layout == "split-folders" and ds.classes == ["a", "b"]
    assert Counter(s.split for s in ds.samples) == {"train": 9, "test": 5}
    for s in ds.samples:
        assert Path(s.source).parts[-3] == s.split
        assert Path(s.source).parent.name == ds.classes[s.label]
    assert ds.counts() == {"train": {"a": 5, "b": 4}, "test": {"a": 2, "b": 3}}
    assert len(ds.split("test")) == 5


def test_split_folders_train_val_test(tmp_path, image_folder_factory):
    root = tmp_path / "stv"
    image_folder_factory(root / "train", {"a": 4, "b": 4})
    image_folder_factory(root / "val", {"a": 1, "b": 2}, seed=1)
    image_folder_factory(root / "test", {"a": 2, "b": 1}, seed=2)
    ds = load_dataset(root)
    assert ds.layout == "split-folders"
    assert Counter((s.split, ds.classes[s.label]) for s in ds.samples) == {
        ("train", "a"): 4, ("train", "b"): 4, ("val", "a"): 1, ("val", "b"): 2,
        ("test", "a"): 2, ("test", "b"): 1,
    }


def test_class_only_in_one_split_still_gets_one_label(tmp_path, image_folder_factory):
    root = tmp_path / "st"
    image_folder_factory(root / "train", {"a": 2, "b": 2})
    image_folder_factory(root / "test", {"b": 1, "c": 1})
    ds = load_dataset(root)
    assert ds.classes == ["a", "b", "c"]
    b = ds.classes.index("b")
    assert {s.split for s in ds.samples if s.label == b} == {"train", "test"}


def test_csv_with_header_relative_paths_and_split_column(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "imgs", {"cat": 3, "dog": 3})
    files = sorted(root.rglob("*.png"))
    lines = ["Path,Label,Split"]  # header names are case-insensitive
    for i, f in enumerate(files):
        split = ["train", "val", "TEST"][i % 3]
        lines.append(f"imgs/{f.parent.name}/{f.name}, {f.parent.name} ,{split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is skipped
    ds = load_dataset(manifest)
    assert ds.layout == "csv" and ds.root == tmp_path
    assert ds.classes == ["cat", "dog"] and len(ds.samples) == 6
    assert [s.split for s in ds.samples] == ["train", "val", "test"] * 2
    for s, f in zip(ds.samples, files, strict=True):
        assert Path(s.source) == tmp_path / "imgs" / f.parent.name / f.name
        assert ds.classes[s.label] == f.parent.name
        assert s.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_csv_columns_in_any_order_and_absolute_paths(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "imgs", {"x": 2, "y": 2})
    files = sorted(root.rglob("*.png"))
    text = "label,extra,path\n" + "".join(f"{f.parent.name},z,{f.resolve()}\n" for f in files)
    (tmp_path / "m.csv").write_text(text)
    ds = load_dataset(tmp_path / "m.csv")
    assert [Path(s.source) for s in ds.samples] == [f.resolve() for f in files]
    assert all(s.split is None for s in ds.samples)
    assert _by_class(ds) == {"x": 2, "y": 2}


def test_csv_without_header(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "imgs", {"x": 2, "y": 2})
    files = sorted(root.rglob("*.png"))
    text = "".join(f"imgs/{f.parent.name}/{f.name},{f.parent.name},train\n" for f in files)
    (tmp_path / "m.txt").write_text(text)
    ds = load_dataset(tmp_path / "m.txt")
    assert len(ds.samples) == 4 and {s.split for s in ds.samples} == {"train"}


def test_csv_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty manifest"):
        load_dataset(tmp_path / "empty.csv")
    (tmp_path / "bad_split.csv").write_text("path,label,split\na.png,x,train\nb.png,y,holdout\n")
    with pytest.raises(DataError, match=r"bad_split.csv:3: split 'holdout'"):
        load_dataset(tmp_path / "bad_split.csv")
    (tmp_path / "short.csv").write_text("path,label\na.png\n")
    with pytest.raises(DataError, match=r"short.csv:2: expected path,label"):
        load_dataset(tmp_path / "short.csv")
    (tmp_path / "header_only.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path / "header_only.csv")


def test_headerless_csv_error_names_the_right_line(tmp_path):
    (tmp_path / "m.csv").write_text("a.png,x,holdout\n")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "m.csv")
    assert "m.csv:1:" in str(info.value)


def _write_medmnist(path: Path, *, label_values=(0, 1), classes=None, seed=0) -> dict:
    """A MedMNIST-style .npz: {split}_images (N, 28, 28) uint8, {split}_labels (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.choice(label_values, size=(n, 1)).astype(np.uint8)
    if classes is not None:
        arrays["classes"] = np.array(classes)
    np.savez(path, **arrays)
    return arrays


def test_npz_medmnist_style_labels_are_flattened(tmp_path):
    arrays = _write_medmnist(tmp_path / "med.npz")
    ds = load_dataset(tmp_path / "med.npz")
    assert ds.layout == "npz" and ds.classes == ["0", "1"]
    assert ds.root == tmp_path
    assert Counter(s.split for s in ds.samples) == {"train": 6, "val": 2, "test": 4}
    for split in ("train", "val", "test"):
        got = ds.split(split)
        assert [s.label for s in got] == arrays[f"{split}_labels"].reshape(-1).tolist()
        for i, s in enumerate(got):
            assert s.source.startswith(NPZ_SCHEME) and s.source.endswith(f"#{split}/{i}")
            image = arrays[f"{split}_images"][i]
            assert np.array_equal(read_npz_image(s.source), image)
            assert s.sha256 == hashlib.sha256(image.tobytes()).hexdigest()
            assert isinstance(s.label, int)


def test_npz_sparse_label_values_are_reindexed(tmp_path):
    arrays = _write_medmnist(tmp_path / "m.npz", label_values=(3, 7))
    ds = load_dataset(tmp_path / "m.npz")
    assert ds.classes == ["3", "7"]
    want = [{3: 0, 7: 1}[int(v)] for v in arrays["train_labels"].reshape(-1)]
    assert [s.label for s in ds.split("train")] == want


def test_npz_with_class_names(tmp_path):
    arrays = _write_medmnist(tmp_path / "m.npz", classes=["benign", "malignant"])
    ds = load_dataset(tmp_path / "m.npz")
    assert ds.classes == ["benign", "malignant"]
    assert [s.label for s in ds.split("test")] == arrays["test_labels"].reshape(-1).tolist()


def test_npz_without_split_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match="_images / _labels"):
        load_dataset(tmp_path / "x.npz")


def test_npz_with_pickled_objects_is_not_unpickled(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 4, 4), np.uint8),
             train_labels=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises((ValueError, DataError)):  # np.load(allow_pickle=False) refuses it
        load_dataset(tmp_path / "x.npz")


def test_leaf_labels_on_nested_folders(tmp_path, image_folder_factory):
    root = tmp_path / "fruit"
    image_folder_factory(root / "Apple", {"Golden": 2, "Granny": 3})
    image_folder_factory(root / "Pear", {"Conference": 2})
    image_folder_factory(root, {"Kiwi": 1})
    leaf = load_dataset(root, labels="leaf")
    assert leaf.classes == ["Apple/Golden", "Apple/Granny", "Kiwi", "Pear/Conference"]
    assert _by_class(leaf) == {"Apple/Golden": 2, "Apple/Granny": 3, "Kiwi": 1,
                               "Pear/Conference": 2}
    top = load_dataset(root)
    assert top.classes == ["Apple", "Kiwi", "Pear"]
    assert _by_class(top) == {"Apple": 5, "Kiwi": 1, "Pear": 2}


def test_leaf_labels_inside_split_folders(tmp_path, image_folder_factory):
    root = tmp_path / "s"
    image_folder_factory(root / "train" / "Apple", {"Golden": 2, "Granny": 2})
    image_folder_factory(root / "test" / "Apple", {"Golden": 1, "Granny": 1})
    ds = load_dataset(root, labels="leaf")
    assert ds.layout == "split-folders"
    assert ds.classes == ["Apple/Golden", "Apple/Granny"]


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere")


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path / "empty")


def test_unsupported_file_is_a_data_error(tmp_path):
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match="expected a folder, a .csv manifest or a .npz"):
        load_dataset(tmp_path / "data.json")


# -- where data may come from (issue: a manifest row read /etc/shadow, /dev/zero spun) ---------


def test_manifest_rows_outside_its_folder_are_refused(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "data", {"a": 2, "b": 2})
    (tmp_path / "secret.png").write_bytes((root / "a" / "a_000.png").read_bytes())
    rows = ["path,label", "a/a_000.png,a", "b/b_000.png,b", "../secret.png,a", "/etc/passwd,b"]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"2 manifest row\(s\) point outside .*m.csv:4: "
                                        r"../secret.png; m.csv:5: /etc/passwd.*--allow-outside"):
        load_dataset(root / "m.csv")
    ds = load_dataset(root / "m.csv", allow_outside=True)
    assert len(ds.samples) == 4


def test_links_in_class_folders_are_not_followed(tmp_path, image_folder_factory):
    root = image_folder_factory(tmp_path / "data", {"a": 3, "b": 3})
    outside = image_folder_factory(tmp_path / "elsewhere", {"c": 2})
    (root / "a" / "link.png").symlink_to(outside / "c" / "c_000.png")
    (root / "linked_class").symlink_to(outside / "c", target_is_directory=True)
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"] and len(ds.samples) == 6
    assert any("2 symbolic link(s)" in n and "a/link.png" in n for n in ds.notes)


def test_devices_and_fifos_are_refused_without_reading(tmp_path):
    import os

    from sightwise.data.decode import decode_image
    from sightwise.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="not a regular file"):
        decode_image("/dev/zero")  # would never end if it were read
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it blocking would wait for a writer forever
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        decode_image(fifo)
    (tmp_path / "m.csv").write_text("path,label\npipe.png,a\n")
    assert load_dataset(tmp_path / "m.csv").samples[0].sha256 == ""  # not hashed either


def test_file_size_bound(tmp_path):
    from sightwise.data.decode import read_regular_file

    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    assert read_regular_file(tmp_path / "big.bin", max_bytes=100) == b"x" * 100
    with pytest.raises(OSError, match="exceeds the limit of 99"):
        read_regular_file(tmp_path / "big.bin", max_bytes=99)
