"""`sightwise inspect ...` as a user meets it: help on every option, --model (with the old
--backbone still accepted), and an empty good or defect side refused with one line."""

import json
import os

import click
import pytest
import typer
from typer.testing import CliRunner

from sightwise.anomaly.cli import inspect_app


def _commands() -> dict[str, click.Command]:
    return typer.main.get_command(inspect_app).commands


@pytest.mark.parametrize("name", ["fit", "score", "evaluate"])
def test_every_option_and_argument_has_help(name):
    params = [p for p in _commands()[name].params if not getattr(p, "hidden", False)]
    assert params
    missing = [p.name for p in params if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


def test_fit_takes_model_like_train_and_still_accepts_backbone(monkeypatch, tmp_path):
    import sightwise.anomaly.fit as fit_module

    seen = []

    def fake_fit(good, out, cfg, defects=None):  # the real fit runs in test_pipeline.py
        seen.append(cfg.backbone)
        return {"threshold": 1.0, "thresholds": {}, "metrics": {}}

    monkeypatch.setattr(fit_module, "fit_detector", fake_fit)
    runner = CliRunner()
    base = ["fit", str(tmp_path), "--out", str(tmp_path / "det")]
    assert runner.invoke(inspect_app, [*base, "--model", "resnet18"]).exit_code == 0
    old = runner.invoke(inspect_app, [*base, "--backbone", "small_resnet"])
    assert old.exit_code == 0 and "--backbone is deprecated; use --model" in old.output
    assert runner.invoke(inspect_app, base).exit_code == 0
    assert seen == ["resnet18", "small_resnet", "efficientnet_lite0"]
    fit_help = runner.invoke(inspect_app, ["fit", "--help"], terminal_width=200).output
    assert "--model" in fit_help and "--backbone" not in fit_help


def _evaluate(detector_dir, good, defect, tmp_path):
    return CliRunner().invoke(inspect_app, [
        "evaluate", str(detector_dir), "--good", str(good), "--defect", str(defect),
        "--report", str(tmp_path / "r.html"), "--json", "--threads", "1"])


def test_defect_classes_behind_folder_links_are_an_error_naming_the_folder(
        detector_dir, inspection_data, tmp_path):
    linked = tmp_path / "defect"
    linked.mkdir()
    os.symlink(inspection_data["defect"] / "blob", linked / "blob", target_is_directory=True)
    res = _evaluate(detector_dir, inspection_data["test_good"], linked, tmp_path)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: --defect")
    assert str(linked) in line and "folder links (blob) are not followed" in line
    assert not (tmp_path / "r.html").exists()


def test_an_empty_good_side_is_an_error(detector_dir, inspection_data, tmp_path):
    (tmp_path / "empty").mkdir()
    res = _evaluate(detector_dir, tmp_path / "empty", inspection_data["defect"], tmp_path)
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: --good {tmp_path / 'empty'}: no images found "
                                  "(folder links are not followed)")


def test_a_folder_link_beside_real_images_is_named_and_the_rest_evaluated(
        detector_dir, inspection_data, tmp_path):
    defect = tmp_path / "defect"
    (defect / "blob").mkdir(parents=True)
    files = sorted((inspection_data["defect"] / "blob").iterdir())
    for f in files[:3]:
        (defect / "blob" / f.name).write_bytes(f.read_bytes())
    os.symlink(inspection_data["defect"] / "blob", defect / "more", target_is_directory=True)
    res = _evaluate(detector_dir, inspection_data["test_good"], defect, tmp_path)
    assert res.exit_code == 0, res.output
    assert f"warning: --defect {defect}: 1 folder link(s) not followed (more)" in res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n_defect"] == 3 and out["image_auroc"] is not None
