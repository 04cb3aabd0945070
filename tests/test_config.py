"""Configuration (sightwise.config): durations and TrainConfig validation."""

from __future__ import annotations

import dataclasses

import pytest

from sightwise.config import STRATEGIES, TrainConfig, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("2h", 7200.0),
        ("0.5m", 30.0), (" 10 M ", 600.0), ("1H", 3600.0), (45, 45.0), (2.5, 2.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [None, "", "   "])
def test_parse_duration_empty_is_none(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["abc", "10d", "-5", "-5m", "1.5.2h", "m", "10 minutes", "1e3", ".5h"])
def test_parse_duration_refuses_unreadable_text(text):
    with pytest.raises(ValueError, match="cannot read duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0.0h"])
def test_parse_duration_refuses_zero(text):
    with pytest.raises(ValueError, match="duration must be positive"):
        parse_duration(text)


def test_defaults_and_model_name():
    cfg = TrainConfig(data="d", out="o")
    assert cfg.strategy == "auto" and cfg.model_name == "efficientnet_lite0"
    assert TrainConfig(data="d", out="o", strategy="scratch").model_name == "small_resnet"
    assert TrainConfig(data="d", out="o", strategy="linear-probe").model_name == "efficientnet_lite0"
    assert TrainConfig(data="d", out="o", strategy="scratch", model="x").model_name == "x"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_accepted(strategy):
    assert TrainConfig(data="d", out="o", strategy=strategy).strategy == strategy


@pytest.mark.parametrize("unfreeze", ["all", "last-1", "last-12"])
def test_valid_unfreeze(unfreeze):
    assert TrainConfig(data="d", out="o", unfreeze=unfreeze).unfreeze == unfreeze


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategy", "transfer", "strategy must be one of auto, linear-probe, finetune, scratch"),
        ("balance", "oversample", "balance must be auto, weighted or none"),
        ("augment", "heavy", "augment must be default, strong or none"),
        ("unfreeze", "last-", "unfreeze must be 'all' or 'last-N'"),
        ("unfreeze", "first-2", "unfreeze must be 'all' or 'last-N'"),
        ("unfreeze", "last-2x", "unfreeze must be 'all' or 'last-N'"),
        ("labels", "bottom", "labels must be top or leaf"),
    ],
)
def test_train_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", out="o", **{field: value})


def test_train_config_is_frozen_and_serialisable():
    cfg = TrainConfig(data="d", out="o", budget_s=parse_duration("5m"), labels="leaf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["budget_s"] == 300.0 and d["labels"] == "leaf"
    assert TrainConfig(**d) == cfg
