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


def _load(name: str, path: Path):
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Tests import it as `sw_label_live` (with --import-mode=importlib they cannot import conftest).
live = _load("sw_label_live", Path(__file__).with_name("_live.py"))


@pytest.fixture
def label_server(tmp_path):
    """start(pool, out, *cli args) -> LabelServer; every server is stopped at teardown."""
    started = []

    def start(pool, out, *args):
        server = live.start(tmp_path, pool, out, *args)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def texture_pool(sw_base, exported, tmp_path_factory) -> Path:
    """Two tiles per class of the session bundle's own texture data, in one flat folder."""
    pool = tmp_path_factory.mktemp("texture_pool")
    for folder in sorted(p for p in (sw_base / "data").iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png"))[:2]:
            shutil.copy(f, pool / f.name)
    return pool
