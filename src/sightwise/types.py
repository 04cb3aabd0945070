"""Typed records passed between stages.

These are plain, frozen dataclasses with no behaviour beyond light validation, so any stage
(torch-free ones included: runtime, search, serve) can import them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled image of a dataset.

    `source` is a file path, or ``npz://<file>#<split>/<index>`` for images held in an array
    file (MedMNIST style). `sha256` is the hash of the file bytes (or of the array bytes).
    """

    source: str
    label: int
    split: str | None
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """An input that could not be used, and why (reported, never fatal)."""

    source: str
    reason: str


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """Calibrated top-k answer for one image."""

    source: str
    top: tuple[ClassScore, ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0].label if self.top else None
