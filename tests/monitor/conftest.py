"""Monitor fixtures: synthetic model outputs (tests/monitor/_synth.py, loaded by path since
the suite runs in importlib mode) and a copy of the session's exported bundle."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """The tests' matrices are small: BLAS threads only spin against the other processes
    on a shared 2-core machine (an SVD of 160 x 64 took 0.3 s instead of 1 ms under load)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def synth():
    return _load("sw_monitor_synth", Path(__file__).parent / "_synth.py")


@pytest.fixture(scope="session")
def ref_bundle(exported, tmp_path_factory) -> Path:
    """A copy of the exported bundle with reference.npz built (shared; do not modify)."""
    from sightwise.monitor.reference import build_reference

    dst = tmp_path_factory.mktemp("monitor") / "bundle"
    shutil.copytree(exported[0], dst)
    build_reference(dst, components=8, log=lambda _m: None)
    return dst
