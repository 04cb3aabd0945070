"""Registering copies a verified bundle into an immutable per-version folder and creates
the MLflow model version; MLflow stays the record of versions."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sightwise.bundle import load_bundle, sha256_path, write_bundle_meta
from sightwise.errors import BundleError
from sightwise.registry.store import RegistryError, mlflow_client
from sightwise.registry.versions import list_versions, register_bundle, search_versions


def test_register_copies_exactly_the_listed_files(home, make_bundle):
    src = make_bundle("b1", macro_f1=0.8)
    (src / ".export-staging").mkdir()  # hidden leftovers and extra folders stay behind
    (src / ".export-staging" / "junk.bin").write_bytes(b"x")
    rec = register_bundle(src, "defects")
    dst = home / "bundles" / "defects" / "1"
    assert rec["version"] == 1 and rec["name"] == "defects"
    assert sorted(p.name for p in dst.iterdir()) == ["bundle.json", "manifest.csv", "model.onnx"]
    for name in ("bundle.json", "manifest.csv", "model.onnx"):
        assert sha256_path(dst / name) == sha256_path(src / name)
        assert not os.access(dst / name, os.W_OK) or os.geteuid() == 0
        assert (dst / name).stat().st_mode & 0o222 == 0  # read-only: versions are immutable
    load_bundle(dst)
    mv = mlflow_client().get_model_version("defects", "1")
    assert mv.source == str(dst)
    assert json.loads(mv.tags["sightwise.metrics"])["macro_f1"] == 0.8
    assert mv.tags["sightwise.parity"] == "passed"


def test_versions_count_up_and_list_reports_them(home, make_bundle):
    register_bundle(make_bundle("a", macro_f1=0.7), "m")
    register_bundle(make_bundle("b", macro_f1=0.9, parity=False, parent="m/1"), "m")
    recs = list_versions("m")
    assert [r["version"] for r in recs] == [1, 2]
    assert recs[0]["metrics"]["macro_f1"] == 0.7 and recs[0]["parity_passed"] is True
    assert recs[1]["parity_passed"] is False and recs[1]["parity"] == "failed"
    assert recs[1]["parent"] == {"name": "m", "version": 1}
    assert all(r["aliases"] == [] and r["created"].endswith("Z") for r in recs)
    assert list_versions() == recs  # every model


def test_register_refuses_a_bundle_holding_a_pickle(home, make_bundle):
    src = make_bundle("p")
    (src / "weights.pt").write_bytes(b"\x80\x04not really")
    meta = json.loads((src / "bundle.json").read_text())
    meta.pop("files")
    write_bundle_meta(src, meta)  # listed with its sha256, as a careless exporter would
    with pytest.raises(BundleError, match="pickle"):
        register_bundle(src, "m")
    assert not (home / "bundles" / "m").exists() or not any((home / "bundles" / "m").iterdir())


def test_register_refuses_a_tampered_bundle(home, make_bundle):
    src = make_bundle("t")
    (src / "model.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="sha256"):
        register_bundle(src, "m")


def test_register_refuses_a_symlink_out_of_the_bundle(home, make_bundle, tmp_path):
    src = make_bundle("s")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", src / "notes.txt")
    with pytest.raises(BundleError, match="outside"):
        register_bundle(src, "m")


@pytest.mark.parametrize("name", ["../escape", "%2e%2e%2fescape", "/abs", ".hidden"])
def test_register_refuses_bad_names(home, make_bundle, name):
    with pytest.raises(RegistryError, match="invalid model name"):
        register_bundle(make_bundle("n"), name)
    assert not (home / "bundles").exists() or not any((home / "bundles").rglob("bundle.json"))


def test_interrupted_leftovers_are_replaced(home, make_bundle):
    """A complete folder MLflow never registered (writer killed after the rename) and a
    hidden staging folder are both cleaned by the next registration."""
    first = make_bundle("one")
    register_bundle(first, "m")
    orphan = home / "bundles" / "m" / "2"
    shutil.copytree(home / "bundles" / "m" / "1", orphan)
    (home / "bundles" / "m" / ".incoming-dead").mkdir()
    second = make_bundle("two", seed=5)
    assert register_bundle(second, "m")["version"] == 2
    assert sha256_path(orphan / "model.onnx") == sha256_path(second / "model.onnx")
    assert not (home / "bundles" / "m" / ".incoming-dead").exists()


def test_numbering_follows_mlflow_after_a_deleted_version(home, make_bundle):
    """MLflow numbers after the highest version it ever made; the folder follows it."""
    register_bundle(make_bundle("a"), "m")
    register_bundle(make_bundle("b", seed=1), "m")
    client = mlflow_client()
    client.delete_model_version("m", "2")
    rec = register_bundle(make_bundle("c", seed=2), "m")
    live = sorted(int(v.version) for v in search_versions(client, "m"))
    assert live == [1, rec["version"]] and rec["version"] >= 3
    mv = client.get_model_version("m", str(rec["version"]))
    assert mv.source == str(home / "bundles" / "m" / str(rec["version"]))
    load_bundle(mv.source)


def test_register_a_run_folder_links_its_tracked_run(home, make_bundle, tmp_path):
    from sightwise.registry.tracking import log_run

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(make_bundle("r"), run / "bundle")
    run_id = log_run("train", run, {"test": {"macro_f1": 0.9}}, {"seed": 0}, run / "bundle",
                     log=lambda _m: None)
    assert run_id
    rec = register_bundle(run, "m")
    assert rec["run_id"] == run_id
    assert mlflow_client().get_model_version("m", "1").tags["sightwise.train_run_id"] == run_id
