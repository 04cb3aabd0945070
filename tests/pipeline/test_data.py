"""The data stage's parts: the labels file's replay rules, the merge and its provenance,
splits by content hash (stable under added images), bad files by path, and a manifest that
`train`'s own reader loads."""

from __future__ import annotations

import pytest

from sightwise.data.datasets import load_dataset
from sightwise.errors import DataError
from sightwise.pipeline.data import (
    Row,
    find_bad_files,
    hash_split,
    leakage_and_conflicts,
    merge_labels,
    read_labels,
    stable_splits,
    write_manifest,
)

HEADER = "path,label,annotator,time,model_version,suggested,suggested_p\n"


def test_labels_replay_undo_skip_and_a_torn_line(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text(HEADER + "a.png,cat,ann,t1,,,\n"
                 "b.png,dog,ann,t2,,,\n"
                 "a.png,dog,bob,t3,,,\n"
                 "a.png,!undo,bob,t4,,,\n"     # bob withdraws his own answer: ann's stands
                 "b.png,!skip,ann,t5,,,\n"     # ann passes on b after all
                 "c.png,cat,ann,t6,1,cat,0.9\n"
                 "d.png,do")                   # killed mid-line: never confirmed
    answers, skipped = read_labels(f)
    assert {p: a["label"] for p, a in answers.items()} == {"a.png": "cat", "c.png": "cat"}
    assert answers["a.png"]["annotator"] == "ann" and skipped == 1


def test_a_file_that_is_not_a_labels_file_is_refused(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,label\na.png,cat\n")
    with pytest.raises(DataError, match="not a labels file"):
        read_labels(f)


def _rows(folder, image_folder_factory):
    data = image_folder_factory(folder / "data", {"a": 4, "b": 4}, size=8)
    ds = load_dataset(data)
    return data, [Row(s.source, ds.classes[s.label], None, s.sha256) for s in ds.samples]


def test_merge_relabels_adds_and_confirms_with_provenance(tmp_path, image_folder_factory):
    data, rows = _rows(tmp_path, image_folder_factory)
    image_folder_factory(tmp_path / "queue", {"c": 1}, size=8)
    f = tmp_path / "labels.csv"
    f.write_text(HEADER + "data/a/a_000.png,b,ann,t,1,a,0.6\n"
                 "data/a/a_001.png,a,ann,t,1,a,0.9\n"
                 "queue/c/c_000.png,c,bob,t,1,a,0.4\n")
    merged, prov = merge_labels(rows, f, [data, tmp_path], allow_outside=False)
    assert {k: prov[k] for k in ("added", "relabelled", "confirmed", "answers")} == \
        {"added": 1, "relabelled": 1, "confirmed": 1, "answers": 3}
    by_name = {r.source.rsplit("/", 1)[1]: r for r in merged}
    assert (by_name["a_000.png"].label, by_name["a_000.png"].origin,
            by_name["a_000.png"].previous_label) == ("b", "relabelled", "a")
    assert by_name["a_001.png"].origin == "confirmed" and by_name["a_002.png"].origin == "dataset"
    assert by_name["c_000.png"].origin == "added" and len(by_name["c_000.png"].sha256) == 64
    assert len(merged) == len(rows) + 1


def test_labelled_files_outside_the_data_are_refused_unless_allowed(tmp_path, image_folder_factory):
    data, rows = _rows(tmp_path / "in", image_folder_factory)
    f = tmp_path / "in" / "sub" / "labels.csv"
    f.parent.mkdir()
    f.write_text(HEADER + "../../secret.png,a,ann,t,,,\n")
    with pytest.raises(DataError, match="lie outside the dataset"):
        merge_labels(rows, f, [data, f.parent], allow_outside=False)
    merged, prov = merge_labels(rows, f, [data, f.parent], allow_outside=True)
    assert prov["added"] == 1 and merged[-1].sha256 == ""  # missing: reported as a bad file


def test_hash_splits_do_not_move_when_images_are_added():
    """Each image's split is a function of its own content hash: adding 200 images leaves
    the first 100 where they were, and the shares are near 70/15/15."""
    shas = [f"{i:064x}" for i in range(300)]
    first = [hash_split(s, 0) for s in shas[:100]]
    assert [hash_split(s, 0) for s in shas[:100]] == first
    splits = [hash_split(s, 0) for s in shas]
    assert splits[:100] == first
    assert 0.08 < splits.count("test") / 300 < 0.22 and 0.6 < splits.count("train") / 300 < 0.8
    assert [hash_split(s, 1) for s in shas[:100]] != first  # the split seed draws another


def test_small_classes_get_val_and_test_and_duplicates_share_a_split():
    rows = [Row(f"/x/{c}{i}", c, None, f"{c}{i:063x}"[-64:]) for c in "ab" for i in range(3)]
    rows.append(Row("/x/copy", "a", None, rows[0].sha256))  # the same bytes twice
    out, notes = stable_splits(rows, 0)
    for c in "ab":
        assert {r.split for r in out if r.label == c} == {"train", "val", "test"}, notes
    assert out[0].split == out[-1].split
    assert leakage_and_conflicts(out)[0] == []


def test_leakage_and_conflicts():
    rows = [Row("/1", "a", "train", "h1"), Row("/2", "a", "test", "h1"),
            Row("/3", "a", "train", "h2"), Row("/4", "b", "train", "h2")]
    leak, conflicts = leakage_and_conflicts(rows)
    assert [g["sha256"] for g in leak] == ["h1"] and [g["sha256"] for g in conflicts] == ["h2"]


def test_bad_files_are_named_and_the_manifest_loads_in_train(tmp_path, image_folder_factory):
    data, rows = _rows(tmp_path, image_folder_factory)
    (data / "a" / "a_001.png").write_bytes(b"not an image")
    bad = find_bad_files(rows, progress=False)
    assert [b["path"].rsplit("/", 1)[1] for b in bad] == ["a_001.png"]
    assert "not an image" in bad[0]["reason"]
    good = [r for r in rows if r.source != bad[0]["path"]]
    good, _ = stable_splits(good, 0)
    manifest = tmp_path / "work" / "data" / "manifest.csv"
    write_manifest(good, manifest)
    assert manifest.read_text().splitlines()[1].startswith("../../data/a/")
    ds = load_dataset(manifest, allow_outside=True)
    assert sorted(s.sha256 for s in ds.samples) == sorted(r.sha256 for r in good)
    assert {s.split for s in ds.samples} <= {"train", "val", "test"}
    with pytest.raises(DataError, match="point outside"):
        load_dataset(manifest)  # train is told allow_outside; the default stays strict
