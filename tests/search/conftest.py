"""Search fixtures: the session's exported bundle (tests/export/_fixtures.py, loaded by
path as tests/serve does), its texture images, and a flat index built from them."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def search_bundle(exported) -> Path:
    return exported[0]


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
