"""`sightwise index ...` end to end on the session bundle and its texture tiles."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from sightwise.search.cli import index_app
from sightwise.search.store import SearchIndex

runner = CliRunner()


def _run(*args):
    result = runner.invoke(index_app, [str(a) for a in args])
    return result


def test_query_finds_the_image_itself(texture_index, texture_data):
    img = sorted((texture_data).rglob("*.png"))[5]
    result = _run("query", texture_index, img, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    matches = json.loads(result.stdout)[0]["matches"]
    assert len(matches) == 3
    assert matches[0]["path"] == str(img.resolve())
    assert matches[0]["label"] == img.parent.name
    assert matches[0]["similarity"] > 0.999
    assert matches[0]["similarity"] >= matches[1]["similarity"] >= matches[2]["similarity"]


def test_build_keeps_labels_and_provenance(texture_index, texture_data):
    idx = SearchIndex.load(texture_index)
    assert len(idx) == 6 * 24 and idx.kind == "flat"
    assert {it["label"] for it in idx.items} == {p.name for p in texture_data.iterdir()
                                                 if p.is_dir()}
    assert all(len(it["sha256"]) == 64 and it["added_at"] for it in idx.items)
    assert idx.bundle["bundle_json_sha256"] and idx.bundle["preprocessing"]["size"] == 64


def test_another_bundle_is_refused(texture_index, search_bundle, tmp_path, texture_data):
    from sw_export_fixtures import copy_bundle

    other = copy_bundle(search_bundle, tmp_path / "other", mean=[0.4, 0.4, 0.4])
    img = next(texture_data.rglob("*.png"))
    result = _run("query", texture_index, img, "--bundle", other)
    assert result.exit_code == 2
    assert "built with bundle" in result.output


def test_add_and_remove(texture_index, texture_data, tmp_path):
    ix = tmp_path / "ix"
    shutil.copytree(texture_index, ix)
    extra = tmp_path / "extra"
    extra.mkdir()
    src = next(texture_data.rglob("*.png"))
    (extra / "new.png").write_bytes(src.read_bytes()[:-1] + b"\0")  # new bytes, new sha
    (extra / "broken.png").write_bytes(b"not an image")
    result = _run("add", ix, extra, "--labels", "none", "-q")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.png" in result.output
    idx = SearchIndex.load(ix)
    assert len(idx) == 145 and idx.items[-1]["path"].endswith("new.png")
    result = _run("remove", ix, str(extra / "new.png"), "0")
    assert result.exit_code == 0, result.output
    assert len(SearchIndex.load(ix)) == 143


def test_evaluate_json_contract(texture_index, texture_data):
    result = _run("evaluate", texture_index, "--queries", texture_data, "--json", "-q")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"recall@1", "recall@5", "recall@10", "map", "n_queries"} <= set(out)
    assert out["n_queries"] == 144
    # every query is byte-identical to an indexed tile, so it is excluded from its results;
    # the nearest other tiles are of the same texture
    assert out["recall@10"] >= out["recall@5"] >= out["recall@1"] > 0.5
