"""Search fixtures: the session's exported bundle (tests/export/_fixtures.py, loaded by
path as tests/serve does), its texture images, and a flat index built from them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fixtures = _load("sw_export_fixtures", Path(__file__).parents[1] / "export" / "_fixtures.py")


@pytest.fixture(scope="session")
def sw_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "sightwise_export"  # shared with tests/export
    base.mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def search_bundle(sw_base) -> Path:
    return fixtures.exported_bundle(sw_base)[0]


@pytest.fixture(scope="session")
def texture_data(sw_base, search_bundle) -> Path:
    """Folder-per-class texture tiles (6 classes x 24) the bundle was trained on."""
    return sw_base / "data"


@pytest.fixture(scope="session")
def texture_index(search_bundle, texture_data, tmp_path_factory) -> Path:
    from sightwise.search.api import build_index

    out = tmp_path_factory.mktemp("search") / "index"
    build_index(texture_data, search_bundle, out, progress=False, log=lambda _m: None)
    return out
