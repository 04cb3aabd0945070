"""Fixtures of the stream tests: the session's tiny exported classifier (tests/conftest.py
`exported`), a tiny detector fitted on generated textures, and videos of known content."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


media = _load("sw_stream_media", Path(__file__).with_name("_media.py"))
CLASS_A, CLASS_B, FPS = media.CLASS_A, media.CLASS_B, media.FPS


@pytest.fixture(scope="session")
def classifier(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="session")
def class_video(classifier, sw_base, tmp_path_factory) -> Path:
    """15 s at 10 fps: 10 s of brick tiles, then 5 s of moon tiles (a new tile each frame)."""
    pytest.importorskip("av")
    a, b = media.class_tiles(sw_base, CLASS_A), media.class_tiles(sw_base, CLASS_B)
    frames = [a[i % len(a)] for i in range(10 * FPS)] + [b[i % len(b)] for i in range(5 * FPS)]
    return media.write_video(tmp_path_factory.mktemp("video") / "classes.mp4", frames, FPS)


@pytest.fixture(scope="session")
def detector(tmp_path_factory) -> Path:
    from sw_anomaly_data import fit_small_detector, write_inspection_data

    data = write_inspection_data(tmp_path_factory.mktemp("stream_inspect"))
    return fit_small_detector(data, tmp_path_factory.mktemp("stream_det") / "detector")


@pytest.fixture(scope="session")
def defect_video(tmp_path_factory) -> Path:
    """20 s at 10 fps of the detector's texture; frames 100-149 carry its bright blob."""
    pytest.importorskip("av")
    from sw_anomaly_data import blob_mask, texture

    rng = np.random.default_rng(7)
    mask = blob_mask()
    frames = []
    for i in range(200):
        img = texture(rng)
        if i in media.DEFECT_FRAMES:
            img[mask] = 250
        frames.append(np.repeat(img.astype(np.uint8)[..., None], 3, axis=2))
    return media.write_video(tmp_path_factory.mktemp("video") / "defect.mp4", frames, FPS)
