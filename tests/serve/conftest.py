"""Serve fixtures: one exported bundle per session (tests/export/_fixtures.py), versions of
it that compute visibly different probabilities, PNG uploads, a search index and a defect
detector for the optional surfaces, and real servers started in subprocesses (helpers in
_helpers.py, importable as `sw_serve_helpers`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helpers = _load("sw_serve_helpers", Path(__file__).with_name("_helpers.py"))


@pytest.fixture(scope="session")
def served_bundle(exported) -> Path:
    """The session's exported bundle (fp32 + int8 graphs, head.npz; tests/conftest.py)."""
    return exported[0]


@pytest.fixture(scope="session")
def versions(served_bundle, tmp_path_factory) -> dict[int, Path]:
    """Versions 1..4 of the model (temperatures 1, 2, 4, 8) and 99: a corrupt one."""
    root = tmp_path_factory.mktemp("versions")
    out = {v: helpers.bundle_version(served_bundle, root / f"v{v}", 2.0 ** (v - 1)) for v in (1, 2, 3, 4)}
    broken = helpers.bundle_version(served_bundle, root / "v99", 1.0)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # no longer matches its sha256 in bundle.json
    (broken / "model.onnx").write_bytes(bytes(data))
    out[99] = broken
    return out


@pytest.fixture(scope="session")
def sample_images(sw_base, served_bundle) -> list[tuple[str, bytes]]:
    """(filename, PNG bytes) of one tile per class from the fixture's dataset."""
    out = []
    for folder in sorted(p for p in (sw_base / "data").iterdir() if p.is_dir()):
        path = sorted(folder.glob("*.png"))[0]
        out.append((path.name, path.read_bytes()))
    return out


@pytest.fixture(scope="session")
def serve_index(sw_base, served_bundle, tmp_path_factory) -> Path:
    """A flat search index of the fixture's images, embedded with the served bundle."""
    from sightwise.search.api import build_index

    out = tmp_path_factory.mktemp("serve-index") / "index"
    build_index(sw_base / "data", served_bundle, out, progress=False, log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def serve_detector(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(a small defect detector, its generated data): fitted in seconds on one thread."""
    from sw_anomaly_data import fit_small_detector, write_inspection_data

    root = tmp_path_factory.mktemp("serve-detector")
    data = write_inspection_data(root / "data", n_good=16, n_test_good=1, n_defect=1)
    return fit_small_detector(data, root / "detector"), data


@pytest.fixture
def live_server(tmp_path):
    """start(**serve_main kwargs) -> LiveServer; every server is stopped at teardown."""
    started: list = []

    def start(**kwargs):
        server = helpers.start_server(tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def monitored_bundle(served_bundle, tmp_path_factory) -> Path:
    """A copy of the served bundle with its drift reference (reference.npz), as `sightwise
    train` writes it: what the prediction log's live monitor tests windows against."""
    import shutil

    from sightwise.monitor.reference import build_reference

    dst = tmp_path_factory.mktemp("monitored") / "bundle"
    shutil.copytree(served_bundle, dst)
    build_reference(dst, components=8, log=lambda _m: None)
    return dst
