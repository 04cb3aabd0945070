"""Label fixtures: a small pool of generated PNGs (tests/conftest.py's make_image_folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def pool_dir(tmp_path, image_folder_factory) -> Path:
    """12 PNGs of 3 visibly different kinds, flattened into one unlabelled folder."""
    src = image_folder_factory(tmp_path / "src", {"red": 4, "green": 4, "blue": 4}, size=24)
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in sorted(src.rglob("*.png")):
        shutil.copy(f, pool / f.name)
    return pool
