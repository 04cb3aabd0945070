"""PIPELINE.toml: malformed files, unknown keys, wrong types and missing data are one clear
line on stderr and exit 2 (with --json, the Contract's shape too); relative paths resolve
against the file's folder."""

from __future__ import annotations

import json

import pytest

from sightwise.pipeline.spec import SpecError, load_spec

GOOD = """\
[data]
path = "images"
[train]
strategy = "linear-probe"
budget = "3m"
seed = 0
[gates]
min_accuracy = 0.95
[register]
name = "steel"
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    return tmp_path


def _write(folder, text):
    (folder / "PIPELINE.toml").write_text(text)
    return folder / "PIPELINE.toml"


def test_the_contract_file_reads_with_paths_from_its_folder(folder, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    spec = load_spec(_write(folder, GOOD))
    assert spec.data == folder / "images" and spec.name == "steel"
    assert spec.work == folder / ".sightwise-pipeline" / "steel"
    assert dict(spec.train) == {"strategy": "linear-probe", "budget_s": 180.0, "seed": 0}
    assert spec.gates["min_accuracy"] == 0.95 and spec.gates["max_regression"] == 0.01
    assert spec.shadow is None and spec.labels is None and spec.split == "hash"
    cfg = spec.train_config(folder / "m.csv", folder / "run", progress=False)
    assert cfg.budget_s == 180.0 and cfg.allow_outside and cfg.data.endswith("m.csv")


@pytest.mark.parametrize("edit, message", [
    (("[train]", "[train\n"), "not valid TOML"),
    (("seed = 0", "seed = 0\nepoch = 3"), "[train] unknown key 'epoch' (did you mean 'epochs'?)"),
    (("[gates]", "[gate]"), "unknown key 'gate' (did you mean 'gates'?)"),
    (("min_accuracy = 0.95", "min_acuracy = 0.95"), "did you mean 'min_accuracy'?"),
    (("min_accuracy = 0.95", "min_accuracy = 95"), "[gates] min_accuracy = 95: expected a number in [0, 1]"),
    (("seed = 0", 'seed = "0"'), "[train] seed = '0': expected int"),
    (('budget = "3m"', 'budget = "soon"'), "[train] budget = 'soon': cannot read duration"),
    (('strategy = "linear-probe"', 'strategy = "magic"'), "strategy must be one of"),
    (('name = "steel"', 'name = "../etc"'), "[register] name: invalid model name"),
    (('path = "images"', 'path = "nope"'), "[data] path: dataset not found:"),
    (("[register]\nname = \"steel\"\n", ""), "missing [register] section"),
    (('path = "images"', 'path = "images"\nsplit = "random"'),
     '[data] split = \'random\': expected "hash" or "seed"'),
    (("[gates]", "[shadow]\nmin_agreement = 0.9\n[gates]"), "[shadow] min_records: missing"),
])
def test_bad_files_are_one_line_and_exit_2(folder, cli, edit, message):
    toml = _write(folder, GOOD.replace(*edit))
    with pytest.raises(SpecError) as err:
        load_spec(toml)
    assert message in str(err.value) and "\n" not in str(err.value)
    res = cli("run", str(toml), "--json")
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr
    out = json.loads(res.stdout)
    assert out["stages"] == [] and out["promoted"] is False and out["version"] is None


def test_missing_file_and_unknown_stage(folder, cli):
    res = cli("run", str(folder / "absent.toml"))
    assert res.exit_code == 2 and "no such pipeline file" in res.stderr
    res = cli("run", str(_write(folder, GOOD)), "--from", "deploy")
    assert res.exit_code == 2 and "--from 'deploy': no such stage" in res.stderr


def test_bad_data_content_fails_its_stage_with_exit_2(folder, cli, image_folder_factory):
    """The folder exists but holds one class: the data stage fails, one line, exit 2."""
    image_folder_factory(folder / "images", {"a": 3}, size=8)
    res = cli("run", str(_write(folder, GOOD)), "--json", "--no-progress")
    assert res.exit_code == 2, res.stderr
    summary = json.loads(res.stdout)
    (stage,) = summary["stages"]
    assert (stage["name"], stage["status"], stage["error"]) == ("data", "failed", summary["reason"])
    assert "training needs at least 2 classes" in summary["reason"]
    assert res.stderr.strip().endswith(summary["reason"])
