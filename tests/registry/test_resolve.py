"""References resolve to verified bundle folders; anything that would leave the store or
load a pickle is refused with a message that says so."""

from __future__ import annotations

import os
import shutil

import pytest

from sightwise.errors import BundleError
from sightwise.registry.promote import promote
from sightwise.registry.resolve import current_version, parse_ref, resolve_bundle
from sightwise.registry.store import RegistryError
from sightwise.registry.versions import register_bundle


@pytest.fixture
def store(home, make_bundle):
    register_bundle(make_bundle("a"), "m")
    register_bundle(make_bundle("b", seed=1, macro_f1=0.95), "m")
    promote("m", 1)
    return home


def test_alias_version_and_path_references(store, make_bundle, tmp_path):
    assert resolve_bundle("m@production") == store / "bundles" / "m" / "1"
    assert resolve_bundle("m/2") == store / "bundles" / "m" / "2"
    plain = make_bundle("plain")
    assert resolve_bundle(str(plain)) == plain
    run = tmp_path / "run"
    shutil.copytree(plain, run / "bundle")
    assert resolve_bundle(run) == run / "bundle"  # a run folder means its bundle


def test_registry_only_resolution_ignores_folders(store, make_bundle):
    plain = make_bundle("plain")
    with pytest.raises(RegistryError):
        resolve_bundle(str(plain), allow_paths=False)
    assert resolve_bundle("m/1", allow_paths=False) == store / "bundles" / "m" / "1"


def test_current_version_follows_the_alias(store):
    assert current_version("m") == (1, store / "bundles" / "m" / "1")
    promote("m", 2)
    assert current_version("m") == (2, store / "bundles" / "m" / "2")
    assert current_version("m", "staging") is None
    assert current_version("unknown") is None


def test_unknown_references(store):
    with pytest.raises(RegistryError, match="no version of m holds the alias 'staging'"):
        resolve_bundle("m@staging")
    with pytest.raises(RegistryError, match="no such registered model version"):
        resolve_bundle("m/9")
    with pytest.raises(RegistryError, match="no registered model named 'other'"):
        resolve_bundle("other@production")
    with pytest.raises(RegistryError, match="not a registry reference"):
        resolve_bundle("no/such/folder")


@pytest.mark.parametrize("ref", ["../m@production", "../../etc/1", "/etc/passwd/1", "m/../m/1",
                                 "%2e%2e%2fm@production", "m%2f..%2f..%2f1", ".m@production",
                                 "m@../production", "/abs@production"])
def test_traversal_is_refused(store, ref):
    with pytest.raises(RegistryError) as err:
        resolve_bundle(ref)
    assert any(w in str(err.value) for w in ("invalid", "refused", "URL-encoded"))


def test_symlink_in_place_of_a_version_is_refused(store, make_bundle):
    outside = make_bundle("outside", seed=9)  # a valid bundle, but not in the store
    v2 = store / "bundles" / "m" / "2"
    shutil.rmtree(v2)
    os.symlink(outside, v2)
    with pytest.raises(RegistryError, match="symlink"):
        resolve_bundle("m/2")


def test_symlink_inside_a_version_pointing_out_is_refused(store, tmp_path):
    (tmp_path / "secret").write_text("s")
    v1 = store / "bundles" / "m" / "1"
    os.symlink(tmp_path / "secret", v1 / "extra.txt")
    with pytest.raises(BundleError, match="outside the bundle"):
        resolve_bundle("m@production")


@pytest.mark.parametrize("pickle_name", ["model.pt", "weights.pth", "x.pkl", "last.ckpt"])
def test_a_pickle_in_a_registered_version_is_refused(store, pickle_name):
    (store / "bundles" / "m" / "1" / pickle_name).write_bytes(b"\x80\x04.")
    with pytest.raises(BundleError, match="pickle"):
        resolve_bundle("m@production")


def test_a_modified_version_is_refused(store):
    f = store / "bundles" / "m" / "1" / "model.onnx"
    os.chmod(f, 0o644)
    f.write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        resolve_bundle("m@production")


def test_parse_ref():
    assert parse_ref("a.b-c_d@prod-2") == ("a.b-c_d", "prod-2", None)
    assert parse_ref("a/12") == ("a", None, 12)
    assert parse_ref("plain-folder") is None


def test_an_edited_bundle_json_of_a_version_is_refused(store):
    """Issue: editing `classes` of a registered version (and recomputing every hash the
    bundle carries) was accepted by `predict NAME/V`; the registry's own record of
    bundle.json's sha256 catches it, whatever the bundle says about itself."""
    import json

    from sightwise.bundle import meta_digest

    path = store / "bundles" / "m" / "1" / "bundle.json"
    meta = json.loads(path.read_text())
    meta["classes"] = ["evil", "labels"]
    meta["digest"] = meta_digest(meta)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="not the one that was registered"):
        resolve_bundle("m@production")
    with pytest.raises(BundleError, match="not the one that was registered"):
        resolve_bundle("m/1")
    from typer.testing import CliRunner

    from sightwise.cli import app

    res = CliRunner().invoke(app, ["predict", "m/1", "x.png"])
    assert res.exit_code == 2 and "not the one that was registered" in res.output
