"""The model bundle (sightwise.bundle): meta round trip, sha256 verification, the digest
over bundle.json, field validation (one line, never a traceback), and refusal of pickles,
escaping paths and unknown schemas."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from sightwise.bundle import (
    SCHEMA_VERSION,
    Bundle,
    load_bundle,
    meta_digest,
    write_bundle_meta,
)
from sightwise.core import atomic_write_bytes
from sightwise.data.preprocess import Preprocessing
from sightwise.errors import BundleError

PRE = Preprocessing(size=96, resize="center-crop", interpolation="bilinear")


@pytest.fixture
def bundle_dir(tmp_path):
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"\x08\x07fake onnx graph")
    (root / "weights.safetensors").write_bytes(os.urandom(256))
    (root / "report.html").write_text("<html>report</html>")
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are not part of the bundle
    write_bundle_meta(root, {
        "task": "classification",
        "classes": ["ok", "scratch", "dent"],
        "preprocessing": PRE.to_dict(),
        "calibration": {"temperature": 1.7},
        "metrics": {"test": {"accuracy": 0.9, "n": 30}},
    })
    return root


def _meta(root):
    return json.loads((root / "bundle.json").read_text())


def _rewrite(root, meta, *, redigest=True):
    """Write bundle.json as an editor would; `redigest` recomputes the digest as a careful
    attacker would, so the checks behind the digest are reached."""
    if redigest:
        meta = {**meta, "digest": meta_digest(meta)}
    (root / "bundle.json").write_text(json.dumps(meta))


def test_write_and_load_round_trip(bundle_dir):
    meta = _meta(bundle_dir)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert set(meta["files"]) == {"model.onnx", "weights.safetensors", "report.html"}
    for name, entry in meta["files"].items():
        data = (bundle_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    b = load_bundle(bundle_dir)
    assert isinstance(b, Bundle) and b.path == bundle_dir and b.meta.to_dict() == meta
    assert meta["digest"] == meta_digest(meta)
    assert b.classes == ["ok", "scratch", "dent"]
    assert b.preprocessing == PRE
    assert b.temperature == 1.7 and b.task == "classification"
    assert b.file("model.onnx") == bundle_dir / "model.onnx"


def test_write_bundle_meta_returns_what_it_wrote(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    meta = write_bundle_meta(tmp_path, {"classes": ["x", "y"], "preprocessing": PRE.to_dict()})
    assert meta == _meta(tmp_path)
    assert meta["files"]["a.bin"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rewriting_meta_does_not_list_bundle_json_itself(bundle_dir):
    write_bundle_meta(bundle_dir, {k: v for k, v in _meta(bundle_dir).items() if k != "files"})
    assert "bundle.json" not in _meta(bundle_dir)["files"]
    load_bundle(bundle_dir)


def test_defaults_for_optional_fields(tmp_path):
    write_bundle_meta(tmp_path, {"classes": ["a", "b"], "preprocessing": PRE.to_dict()})
    b = load_bundle(tmp_path)
    assert b.temperature == 1.0 and b.task == "classification"


def test_unlisted_file_is_refused_by_file(bundle_dir):
    with pytest.raises(BundleError, match="bundle has no model.int8.onnx"):
        load_bundle(bundle_dir).file("model.int8.onnx")


def test_modified_file_fails_verification(bundle_dir):
    data = bytearray((bundle_dir / "weights.safetensors").read_bytes())
    data[10] ^= 0xFF
    (bundle_dir / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights.safetensors does not match its sha256 "
                                          r"\(modified or corrupt\)"):
        load_bundle(bundle_dir)
    assert load_bundle(bundle_dir, verify=False).classes == ["ok", "scratch", "dent"]


def test_missing_listed_file_is_refused(bundle_dir):
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="listed file model.onnx is missing"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("name", ["model.pt", "state.pkl", "x.PTH", "sub/ckpt.ckpt", "m.joblib"])
def test_pickle_files_are_refused(bundle_dir, name):
    target = bundle_dir / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    with pytest.raises(BundleError, match="holds a pickle file"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="holds a pickle file"):
        load_bundle(bundle_dir, verify=False)  # refused even without verification


@pytest.mark.parametrize("name", ["../outside.bin", "sub/../../outside.bin"])
def test_listed_name_leaving_the_folder_is_refused(bundle_dir, name):
    (bundle_dir.parent / "outside.bin").write_bytes(b"secret")
    meta = _meta(bundle_dir)
    meta["files"][name] = {"sha256": hashlib.sha256(b"secret").hexdigest(), "bytes": 6}
    _rewrite(bundle_dir, meta)
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle_dir)


def test_absolute_listed_name_is_refused(bundle_dir):
    outside = bundle_dir.parent / "abs.bin"
    outside.write_bytes(b"x")
    meta = _meta(bundle_dir)
    meta["files"][str(outside)] = {"sha256": hashlib.sha256(b"x").hexdigest(), "bytes": 1}
    _rewrite(bundle_dir, meta)
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle_dir)


def test_symlink_leaving_the_folder_is_refused(bundle_dir):
    (bundle_dir.parent / "elsewhere.txt").write_text("x")
    (bundle_dir / "link.txt").symlink_to(bundle_dir.parent / "elsewhere.txt")
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None, "1"])
def test_schema_mismatch_is_refused(bundle_dir, version):
    meta = _meta(bundle_dir)
    if version is None:
        del meta["schema_version"]
    else:
        meta["schema_version"] = version
    _rewrite(bundle_dir, meta)
    with pytest.raises(BundleError, match=f"bundle schema {version!r}, this Sightwise reads"):
        load_bundle(bundle_dir)


def test_not_a_bundle_and_unreadable_meta(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(tmp_path)


def test_atomic_write_bytes_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# -- bundle.json is verified as a whole (issue: an edited `classes` was served) ----------------


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("classes", ["evil", "scratch", "dent"]),
    lambda m: m.__setitem__("calibration", {"temperature": 0.5}),
    lambda m: m["files"].pop("report.html"),
])
def test_an_edited_bundle_json_is_refused(bundle_dir, edit):
    meta = _meta(bundle_dir)
    edit(meta)
    _rewrite(bundle_dir, meta, redigest=False)
    with pytest.raises(BundleError, match="changed after it was written"):
        load_bundle(bundle_dir)


def test_a_registered_hash_catches_a_recomputed_digest(bundle_dir):
    registered = hashlib.sha256((bundle_dir / "bundle.json").read_bytes()).hexdigest()
    assert load_bundle(bundle_dir, expected_sha256=registered).classes == ["ok", "scratch", "dent"]
    meta = _meta(bundle_dir)
    meta["classes"] = ["evil", "scratch", "dent"]
    _rewrite(bundle_dir, meta)  # self-consistent again: only the registry's record notices
    load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not the one that was registered"):
        load_bundle(bundle_dir, expected_sha256=registered)


def test_a_bundle_without_digest_is_refused(bundle_dir):
    meta = _meta(bundle_dir)
    del meta["digest"]
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="has no digest"):
        load_bundle(bundle_dir)


# -- field validation: one line naming the field (issue: NaN probabilities, tracebacks) -------


@pytest.mark.parametrize(("field", "value", "message"), [
    ("calibration", {"temperature": 0}, "calibration.temperature must be a number"),
    ("calibration", {"temperature": -1.5}, "calibration.temperature must be a number"),
    ("calibration", {"temperature": "hot"}, "calibration.temperature must be a number"),
    ("calibration", {"temperature": float("nan")}, "calibration.temperature must be a number"),
    ("classes", "ok,scratch", "classes must be a non-empty list"),
    ("classes", [], "classes must be a non-empty list"),
    ("classes", ["ok", 3], "classes must be non-empty strings"),
    ("classes", ["ok", "ok", "dent"], "must not repeat"),
    ("files", ["model.onnx"], "files must be an object"),
    ("files", {"model.onnx": {"sha256": "x"}}, "needs a 64-character sha256"),
    ("preprocessing", {**PRE.to_dict(), "std": [0.0, 0.0, 0.0]}, "std must be positive"),
    ("preprocessing", {**PRE.to_dict(), "mean": [0.5, 0.5]}, "mean must be three finite"),
    ("preprocessing", {**PRE.to_dict(), "size": 99999}, "preprocessing: image size"),
    ("preprocessing", {**PRE.to_dict(), "size": "224"}, "size must be a whole number"),
    ("task", "segmentation", "task 'segmentation' is not one of"),
    ("export", {"fp32_passed": "yes"}, "export.fp32_passed must be true or false"),
])
def test_bad_fields_are_refused_with_one_line(bundle_dir, field, value, message):
    meta = _meta(bundle_dir)
    meta[field] = value
    _rewrite(bundle_dir, meta)
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(bundle_dir)
    assert "\n" not in str(err.value)


def test_classes_must_match_the_head(bundle_dir):
    meta = _meta(bundle_dir)
    meta["model"] = {"name": "x", "num_classes": 4}
    _rewrite(bundle_dir, meta)
    with pytest.raises(BundleError, match="names but the model's head has 4 outputs"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("text", ["[1, 2, 3]", "null", '"bundle"', "[" * 100_000 + "]" * 100_000])
def test_not_an_object_or_nested_too_deeply(tmp_path, text):
    (tmp_path / "bundle.json").write_text(text)
    with pytest.raises(BundleError, match="expected a JSON object|nested too deeply"):
        load_bundle(tmp_path)


def test_writing_refuses_what_loading_would_refuse(tmp_path):
    with pytest.raises(BundleError, match="temperature"):
        write_bundle_meta(tmp_path, {"classes": ["a", "b"], "preprocessing": PRE.to_dict(),
                                     "calibration": {"temperature": 0.0}})
    assert not (tmp_path / "bundle.json").exists()


def test_the_graph_rule(bundle_dir):
    """One rule decides which graph may run: listed, exported, parity passed (or forced)."""
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="has no parity record"):
        b.graph()
    meta = {k: v for k, v in _meta(bundle_dir).items() if k != "files"}
    for export, fp32_ok, int8_ok in [
        ({"fp32_passed": True, "int8_passed": None}, True, "has no model.int8.onnx"),
        ({"fp32_passed": False, "int8_passed": None, "failed_checks": ["agreement 90%"]},
         r"failed its parity gate at export \(agreement 90%\)", "has no model.int8.onnx"),
        ({"fp32_passed": False, "int8_passed": None, "forced": True}, True, "has no model.int8"),
    ]:
        write_bundle_meta(bundle_dir, {**meta, "export": export})
        b = load_bundle(bundle_dir)
        if fp32_ok is True:
            assert b.graph() == bundle_dir / "model.onnx"
        else:
            with pytest.raises(BundleError, match=fp32_ok):
                b.graph()
        with pytest.raises(BundleError, match=int8_ok):
            b.graph(int8=True)
    (bundle_dir / "model.int8.onnx").write_bytes(b"int8")
    write_bundle_meta(bundle_dir, {**meta, "export": {"fp32_passed": True, "int8_passed": False}})
    with pytest.raises(BundleError, match="model.int8.onnx failed its parity gate"):
        load_bundle(bundle_dir).graph(int8=True)
