"""`sightwise models ...` through typer's runner: the --json contract, refusals exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sightwise.registry.cli import models_app

runner = CliRunner()


def run(*args: str, code: int = 0):
    res = runner.invoke(models_app, list(args))
    assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
    return res


@pytest.fixture
def cli_store(home, make_bundle):
    run("register", str(make_bundle("a", macro_f1=0.9)), "--name", "m")
    run("register", str(make_bundle("b", macro_f1=0.5, seed=1, parent={"name": "m", "version": 1})),
        "--name", "m")
    run("register", str(make_bundle("c", macro_f1=0.9, seed=2, parity=False)), "--name", "m")
    return home


def test_list_json_contract(cli_store):
    run("promote", "m", "1")
    recs = json.loads(run("list", "m", "--json").stdout)
    assert [r["version"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert {"version", "aliases", "metrics", "parity_passed", "created"} <= set(r)
        assert isinstance(r["version"], int) and isinstance(r["parity_passed"], bool)
    assert recs[0]["aliases"] == ["production"] and recs[1]["aliases"] == []
    assert recs[1]["metrics"]["macro_f1"] == 0.5 and recs[1]["parent"]["version"] == 1
    assert [r["parity_passed"] for r in recs] == [True, True, False]


def test_refusals_exit_2_with_the_reason(cli_store):
    run("promote", "m", "1")
    res = run("promote", "m", "2", code=2)
    assert "test macro-F1 0.5000 is 0.4000 below production v1's 0.9000" in res.stderr
    res = run("promote", "m", "3", code=2)
    assert "failed its export parity gate" in res.stderr
    res = run("promote", "m", "3", "--force", "--reason", "known-good on the line")
    assert "m@production: v1 -> v3" in res.stdout and "FORCED" in res.stderr


def test_show_json_has_lineage_and_history(cli_store):
    run("promote", "m", "1")
    run("promote", "m", "2", "--tolerance", "0.5")
    rec = json.loads(run("show", "m@production", "--json").stdout)
    assert rec["version"] == 2 and rec["aliases"] == ["production"]
    lin = rec["lineage"]
    assert lin["data"]["manifest_sha256"] == "a" * 64 and lin["git_commit"] == "0123abc"
    assert lin["config"]["seed"] == 1 and lin["parity"]["parity_passed"] is True
    assert lin["parent"] == {"name": "m", "version": 1}
    assert [(e["from"], e["to"]) for e in rec["history"]] == [(None, 1), (1, 2)]
    assert json.loads(run("show", "m/3", "--json").stdout)["parity"] == "failed"
    assert json.loads(run("show", "m", "--json").stdout)["version"] == 3  # latest


def test_text_list_shows_aliases_and_history(cli_store):
    run("promote", "m", "1")
    run("promote", "m", "3", "--force", "--reason", "hotfix")
    run("rollback", "m")
    out = run("list").stdout
    assert "production" in out.splitlines()[1]  # v1 row
    assert "promote  production: v1 -> v3 FORCED" in out and "reason: hotfix" in out
    assert "rollback production: v3 -> v1" in out
    assert "m v1" in run("show", "m@production").stdout


@pytest.mark.parametrize("args", [["show", "../../etc@production"], ["show", "%2e%2e%2fm"],
                                  ["register", "/nonexistent", "--name", "../x"],
                                  ["promote", "m", "9"], ["list", "nope"]])
def test_bad_references_exit_2(cli_store, args):
    res = run(*args, code=2)
    assert res.stderr.startswith("error: ")
