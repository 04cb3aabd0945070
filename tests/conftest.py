"""Shared fixtures: small synthetic image folders that tests write for themselves.

`make_image_folder(root, classes={"a": 5, "b": 5})` writes ``root/<class>/<class>_NNN.<fmt>``.
Every class gets its own dominant colour and stripe orientation, and every image its own
seeded noise, so classes are easy to tell apart (a tiny model or HOG separates them) and
no two files are byte-identical. The same arguments always write the same bytes.

Use it through the `image_folder_factory` fixture (with `--import-mode=importlib` a test
module cannot import conftest), or take `tmp_image_folder`: 3 classes x 12 PNGs of 32 px.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Well-separated dominant colours; class k uses COLOURS[k % len(COLOURS)].
COLOURS = np.array(
    [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40), (200, 60, 210), (40, 200, 210)],
    dtype=np.float64,
)
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP",
               "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP"}


def synthetic_image(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3): class colour, stripes at angle 45 deg * class_index, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.pi / 4 * class_index
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 8 + phase)
    colour = COLOURS[class_index % len(COLOURS)]
    img = colour * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_image_folder(root, classes: dict[str, int], size: int = 32, seed: int = 0,
                      fmt: str = "png") -> Path:
    """Write ``root/<class>/<class>_NNN.<fmt>`` with classes[name] images each; return root.

    Class k is the k-th key of `classes` (insertion order) and decides colour and stripes.
    """
    root = Path(root)
    fmt = fmt.lower().lstrip(".")
    pil_format = _PIL_FORMAT[fmt]
    for k, (name, n) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(n):
            Image.fromarray(synthetic_image(k, size, rng)).save(
                folder / f"{name}_{i:03d}.{fmt}", pil_format
            )
    return root


@pytest.fixture
def image_folder_factory():
    """The `make_image_folder` function itself (call it with a path under tmp_path)."""
    return make_image_folder


@pytest.fixture
def tmp_image_folder(tmp_path) -> Path:
    """A folder-per-class dataset: classes apple, banana, cherry x 12 PNGs of 32 x 32."""
    return make_image_folder(tmp_path / "images", {"apple": 12, "banana": 12, "cherry": 12})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(data folder, run folder) of one linear-probe run at 96 px (a 3x3 feature map), shared
    by the session: what `sightwise train` makes (bundle exported, reference.npz written).

    Tests must not modify it; copy the bundle first (shutil.copytree) to change it.
    """
    from sightwise.config import TrainConfig
    from sightwise.workflows import train as run_training

    root = tmp_path_factory.mktemp("trained")
    data = make_image_folder(root / "data", {"apple": 14, "banana": 14, "cherry": 14})
    run = root / "run"
    run_training(TrainConfig(data=str(data), out=str(run), strategy="linear-probe", img_size=96,
                             progress=False), log=lambda msg: None)
    return data, run


def pytest_configure(config):
    """Module- and session-scoped fixtures run outside any test's monkeypatch: give the
    whole session a store of its own too, so nothing reaches the user's ~/.sightwise."""
    import os
    import tempfile

    os.environ["SIGHTWISE_HOME"] = tempfile.mkdtemp(prefix="sightwise-tests-home-")
    os.environ["SIGHTWISE_TRACKING"] = "0"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _isolated_store(monkeypatch, tmp_path_factory):
    """No test writes MLflow runs into the user's ~/.sightwise (registry tests opt back in)."""
    monkeypatch.setenv("SIGHTWISE_TRACKING", "0")
    monkeypatch.setenv("SIGHTWISE_HOME", str(tmp_path_factory.getbasetemp() / "sightwise-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def load_test_module(name: str, path: Path):
    """Load a helper module of the test tree by path, once (tests use importlib mode)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


export_fixtures = load_test_module("sw_export_fixtures",
                                   Path(__file__).parent / "export" / "_fixtures.py")
load_test_module("sw_anomaly_data", Path(__file__).parent / "anomaly" / "_data.py")


@pytest.fixture(scope="session")
def sw_base(tmp_path_factory) -> Path:
    """Session folder of the tiny trained + exported bundle shared by export, runtime,
    serve and search tests (tests/export/_fixtures.py)."""
    base = tmp_path_factory.getbasetemp() / "sightwise_export"
    base.mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def trained_bundle(sw_base) -> Path:
    return export_fixtures.trained_bundle(sw_base)


@pytest.fixture(scope="session")
def exported(sw_base) -> tuple[Path, Path]:
    return export_fixtures.exported_bundle(sw_base)


@pytest.fixture(scope="session")
def copy_bundle():
    """copy_bundle(src, dst, **preprocessing): a re-hashed copy with other preprocessing."""
    return export_fixtures.copy_bundle
