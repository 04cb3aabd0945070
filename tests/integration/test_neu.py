"""NEU steel defects: the issue's acceptance run, then export and the ONNX runtime."""

import json

import pytest
from typer.testing import CliRunner

from sightwise.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()


@pytest.fixture(scope="module")
def neu_run(datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("neu") / "run"
    res = runner.invoke(app, ["train", str(datasets / "neu_det" / "images"), "--out", str(out),
                              "--budget", "3m", "--seed", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_neu_accuracy_and_calibration(neu_run):
    m = json.loads((neu_run / "metrics.json").read_text())
    assert m["test"]["n"] == 270
    assert m["test"]["accuracy"] >= 0.995
    assert m["test"]["ece"] <= m["test"]["ece_uncalibrated"] + 1e-9
    assert m["timing"]["total_seconds"] < 3 * 60 + 30  # the budget covers features too
    assert len(m["data"]["leakage"]) == 1  # NEU holds one byte-identical pair


def test_neu_export_passes_parity_gate_and_runtime_predicts(neu_run, datasets):
    res = runner.invoke(app, ["export", str(neu_run / "bundle"), "--int8"])
    assert res.exit_code == 0, res.output
    parity = json.loads((neu_run / "bundle" / "parity.json").read_text())
    assert parity["passed"] and parity["n"] == 270
    assert parity["fp32"]["agreement"] >= 0.999
    assert parity["int8"]["size_ratio"] >= 3.5
    img = next((datasets / "neu_det" / "images" / "scratches").iterdir())
    res = runner.invoke(app, ["predict", str(neu_run / "bundle"), str(img), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["predictions"][0]["label"] == "scratches"
