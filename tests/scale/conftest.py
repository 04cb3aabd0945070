"""Scale fixtures: the session's exported bundle (tests/export/_fixtures.py) and small
folders of its texture tiles, with sub-folders and broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scale_bundle(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="session")
def tiles(sw_base, scale_bundle) -> Path:
    """The bundle's texture tiles: 6 class folders x 24 PNGs of 40 px."""
    return sw_base / "data"


def copy_folder(tiles: Path, dest: Path, per_class: int, *, broken: bool = True) -> Path:
    """`per_class` tiles of every class under dest/<class>/, plus (with `broken`) a file
    that is not an image and a truncated PNG at the top level."""
    for cls in sorted(p for p in tiles.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dest / cls.name / f.name)
    if broken:
        (dest / "notes.png").write_bytes(b"not an image at all")
        good = next((dest / cls.name).iterdir())
        (dest / "cut.png").write_bytes(good.read_bytes()[:60])
    return dest


@pytest.fixture
def copy_tiles(tiles):
    """copy_tiles(dest, per_class, broken=True): `copy_folder` from the session's tiles."""
    return lambda dest, per_class, broken=True: copy_folder(tiles, dest, per_class, broken=broken)


@pytest.fixture
def folder(tiles, tmp_path) -> Path:
    """6 classes x 4 tiles in class folders, plus two broken files: 26 files."""
    return copy_folder(tiles, tmp_path / "in", 4)


@pytest.fixture(scope="session")
def detector(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(detector bundle, its generated data): tests/anomaly's small detector at 64 px."""
    from sw_anomaly_data import fit_small_detector, write_inspection_data

    data = write_inspection_data(tmp_path_factory.mktemp("scale-inspect"))
    return fit_small_detector(data, tmp_path_factory.mktemp("scale-det") / "detector"), data
