"""`sightwise explain`: an overlay at the input's size, for the predicted or a given class."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sightwise.cli import app

runner = CliRunner()


def test_explain_writes_overlay_of_input_size(trained_run, tmp_path):
    data, run = trained_run
    src = tmp_path / "big.png"
    Image.open(next((data / "cherry").iterdir())).resize((77, 45)).save(src)
    out = tmp_path / "overlay.png"
    res = runner.invoke(app, ["explain", str(run / "bundle"), str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "cherry" in res.output
    img = Image.open(out)
    assert img.size == (77, 45)
    assert np.asarray(img).std() > 0


def test_explain_given_class_and_unknown_class(trained_run, tmp_path):
    data, run = trained_run
    src = next((data / "apple").iterdir())
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert runner.invoke(app, ["explain", str(run / "bundle"), str(src), "--out", str(a),
                               "--class", "banana"]).exit_code == 0
    assert runner.invoke(app, ["explain", str(run / "bundle"), str(src), "--out", str(b)]).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    res = runner.invoke(app, ["explain", str(run / "bundle"), str(src), "--out", str(a),
                              "--class", "durian"])
    assert res.exit_code == 2 and "unknown class" in res.output
