"""Predict with a bundle's ONNX graph through `sightwise.runtime`: what the server and the
edge device answer, with no torch. A bundle without a usable graph gets one clear line
(`Bundle.graph` is the rule). Each unreadable image gets its own error; the others are
still answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sightwise.runtime import Predictor
from sightwise.types import Prediction


def open_predictor(bundle_ref: str | Path, *, threads: int | None = None, int8: bool = False,
                   batch_size: int = 32) -> Predictor:
    """A Predictor for a bundle folder, a run folder, NAME@ALIAS or NAME/VERSION; the
    bundle is verified (and, from the registry, checked against what was registered)."""
    from sightwise.registry.resolve import open_bundle

    return Predictor(open_bundle(bundle_ref), int8=int8, threads=threads, batch_size=batch_size)


def predict_files(bundle_ref: str | Path, paths: Sequence[str | Path], *, top_k: int = 3,
                  threads: int | None = None, batch_size: int = 32) -> list[Prediction]:
    """One calibrated top-k Prediction per path, in order."""
    predictor = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    return predictor.predict_paths([str(p) for p in paths], top_k=top_k)
