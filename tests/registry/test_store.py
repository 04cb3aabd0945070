"""Names, aliases and references are checked before anything touches the file system."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sightwise.registry.store import (
    RegistryError,
    bundles_root,
    check_reference_text,
    default_tracking_uri,
    model_dir,
    store_lock,
    tracking_uri,
    validate_alias,
    validate_name,
    version_dir,
)


@pytest.mark.parametrize("name", ["defects", "a", "A-b_c.1", "x" * 100, "9lives", "a.b_c-1"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "..", "../x", "a/b", "a\\b", "/abs", "x" * 101,
                                  "a b", "a@b", "caf\u00e9", "a\n", "%2e%2e", "a\x00b",
                                  "-rf", "_private", "a..b"])
def test_invalid_names(name):
    with pytest.raises(RegistryError, match="invalid model name"):
        validate_name(name)


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "V12", "", "-x", "prod/x", "a" * 65])
def test_invalid_aliases(alias):
    with pytest.raises(RegistryError, match="invalid alias"):
        validate_alias(alias)


@pytest.mark.parametrize("ref", ["%2e%2e%2fetc", "%2E%2E%2F%2E%2E%2Fetc@production",
                                 "m%2f3", "%252e%252e%252f", "x\x00y"])
def test_encoded_traversal_is_refused(ref):
    with pytest.raises(RegistryError):
        check_reference_text(ref)


def test_plain_text_passes():
    assert check_reference_text("defects@production") == "defects@production"
    assert check_reference_text("runs/a b/bundle") == "runs/a b/bundle"


def test_store_location_follows_environment(home, monkeypatch):
    assert bundles_root() == home / "bundles"
    assert tracking_uri() == default_tracking_uri() == f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert bundles_root() == home / "bundles"  # bundles stay in the project directory


def test_symlinked_model_folder_leaving_the_store_is_refused(home, tmp_path):
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (home / "bundles").mkdir()
    os.symlink(outside, home / "bundles" / "evil")
    with pytest.raises(RegistryError, match="symlink"):
        version_dir("evil", 1)
    assert model_dir("fine") == home / "bundles" / "fine"


def test_symlinked_version_folder_is_refused(home, tmp_path):
    (home / "bundles" / "m").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", home / "bundles" / "m" / "2")
    with pytest.raises(RegistryError, match="symlink"):
        version_dir("m", 2)


LOCKER = """
import os, sys, time
os.environ["SIGHTWISE_HOME"] = sys.argv[1]
from sightwise.registry.store import store_lock
with store_lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_is_released_when_its_holder_is_killed(home):
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(home)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryError, match="busy"):
            with store_lock(timeout=0.2):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=10)
    t0 = time.monotonic()
    with store_lock(timeout=5):
        pass
    assert time.monotonic() - t0 < 2


def test_registry_and_server_share_one_grammar():
    """The registry, the CLI and the server validate with sightwise.core (issue: the
    registry accepted '-rf', '_x' and 'a..b', which serve refused)."""
    from sightwise import core

    for name in ("-rf", "_x", "a..b", "ok-name"):
        try:
            core.validate_name(name)
            core_ok = True
        except core.ModelRefError:
            core_ok = False
        try:
            validate_name(name)
            registry_ok = True
        except RegistryError:
            registry_ok = False
        assert core_ok == registry_ok == (name == "ok-name")


@pytest.mark.parametrize("ref", ["demo/99999999999999999999", "demo/0", "demo/0007"])
def test_out_of_range_versions_are_one_line_errors(ref):
    from sightwise.registry.resolve import parse_ref

    with pytest.raises(RegistryError, match="invalid version|invalid model reference"):
        parse_ref(ref)
