"""Session fixtures: a trained tiny bundle and its export (see _fixtures.py)."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sw_export_fixtures",
                                               Path(__file__).parents[1] / "export" / "_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


@pytest.fixture(scope="session")
def sw_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "sightwise_export"
    base.mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def trained_bundle(sw_base) -> Path:
    return fixtures.trained_bundle(sw_base)


@pytest.fixture(scope="session")
def exported(sw_base) -> tuple[Path, Path]:
    return fixtures.exported_bundle(sw_base)


@pytest.fixture(scope="session")
def copy_bundle():
    """copy_bundle(src, dst, **preprocessing): a re-hashed copy with other preprocessing."""
    return fixtures.copy_bundle
