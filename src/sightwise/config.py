"""Frozen configuration per stage; the resolved config is saved with every run."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

STRATEGIES = ("auto", "linear-probe", "finetune", "scratch")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    strategy: str = "auto"
    model: str | None = None  # None: efficientnet_lite0, or small_resnet for scratch
    budget_s: float | None = None  # wall-clock bound on decode + features + training
    img_size: int | None = None  # None: the backbone's own (224 for Lite0)
    seed: int = 0  # weights' initialisation, data order, ensemble members
    split_seed: int = 0  # its own seed, so retraining with another --seed tests on the same images
    batch_size: int = 32
    epochs: int = 30  # an upper bound; early stopping and the budget usually end sooner
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    unfreeze: str = "all"  # "all" or "last-N" (the last N backbone stages train)
    # Small validation sets are noisy: a few flat epochs in a row happen by chance, and a
    # shorter patience stops a run that is still improving (docs/experiments/).
    patience: int = 8
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    members: int | None = None  # fine-tuned ensemble size; None: 3 up to 2000 training images, else 1
    tta: bool = True  # also predict on the mirrored image and average (when augmentation flips)
    cv: int | None = None  # k-fold estimate on train+val; the final model uses all non-test data
    balance: str = "auto"  # auto (weighted loss above 3:1), weighted, none
    augment: str = "default"  # default (crop, h-flip, colour), strong (+ v-flip, rot90), none
    drop_leakage: bool = False
    labels: str = "top"  # class = top folder, or "leaf" = the whole folder path
    workers: int = 2
    progress: bool = True
    overwrite: bool = False  # replace an existing OUT/bundle
    allow_outside: bool = False  # a CSV manifest may name files outside its folder
    synthetic: str | None = None  # folder of generated class folders; kept only if they help

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.balance not in ("auto", "weighted", "none"):
            raise ValueError("balance must be auto, weighted or none")
        if self.augment not in ("default", "strong", "none"):
            raise ValueError("augment must be default, strong or none")
        if not (self.unfreeze == "all" or re.fullmatch(r"last-\d+", self.unfreeze)):
            raise ValueError("unfreeze must be 'all' or 'last-N'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.members is not None and self.members < 1:
            raise ValueError("members must be at least 1")
        if self.labels not in ("top", "leaf"):
            raise ValueError("labels must be top or leaf")

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return "small_resnet" if self.strategy == "scratch" else "efficientnet_lite0"

    def to_dict(self) -> dict:
        return asdict(self)


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1.5h' or plain seconds -> seconds; None stays None.

    >>> parse_duration("10m"), parse_duration("90"), parse_duration("1.5h")
    (600.0, 90.0, 5400.0)
    """
    if text is None or str(text).strip() == "":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 90s, 10m, 1h")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError("duration must be positive")
    return value
