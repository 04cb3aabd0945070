"""Inspection fixtures on the generated data of _data.py (importable as `sw_anomaly_data`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sw_anomaly_data import blob_mask, fit_small_detector, write_inspection_data


@pytest.fixture(scope="session")
def inspection_data(tmp_path_factory) -> dict[str, Path]:
    return write_inspection_data(tmp_path_factory.mktemp("inspect"))


@pytest.fixture(scope="session")
def detector_dir(inspection_data, tmp_path_factory) -> Path:
    return fit_small_detector(inspection_data, tmp_path_factory.mktemp("det") / "detector")


@pytest.fixture(scope="session")
def planted_mask() -> np.ndarray:
    """The planted defect's mask at the generated images' size (64 x 72)."""
    return blob_mask()
