"""`sightwise index ...` end to end on the session bundle and its texture tiles."""

from __future__ import annotations

import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from sightwise.search.cli import index_app
from sightwise.search.embed import embedding_notes
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
    result = _run("add", ix, extra, "--labels", "none", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.png" in result.output
    idx = SearchIndex.load(ix)
    assert len(idx) == 145 and idx.items[-1]["path"].endswith("new.png")
    result = _run("remove", ix, str(extra / "new.png"), "0")
    assert result.exit_code == 0, result.output
    assert len(SearchIndex.load(ix)) == 143


def test_evaluate_json_contract(texture_index, texture_data):
    result = _run("evaluate", texture_index, "--queries", texture_data, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"recall@1", "recall@5", "recall@10", "map", "n_queries"} <= set(out)
    assert out["n_queries"] == 144
    # every query is byte-identical to an indexed tile, so it is excluded from its results;
    # the nearest other tiles are of the same texture
    assert out["recall@10"] >= out["recall@5"] >= out["recall@1"] > 0.5
    # the session bundle is a linear probe: evaluating says which embedding was scored
    assert "ImageNet features, frozen" in result.stderr


def test_build_says_a_linear_probe_indexes_frozen_imagenet_features(search_bundle, texture_data,
                                                                     tmp_path):
    model = json.loads((search_bundle / "bundle.json").read_text())["model"]
    assert model["strategy"] == "linear-probe"
    result = _run("build", texture_data, "--bundle", search_bundle, "--out", tmp_path / "ix",
                  "--no-progress")
    assert result.exit_code == 0, result.output
    assert (f"embedding: {model['name']}'s ImageNet features, frozen (a linear probe trains "
            "only the head)") in result.stderr
    assert "sightwise train DATA --strategy finetune" in result.stderr
    assert "docs/guides/search.md" in result.stderr
    recorded = SearchIndex.load(tmp_path / "ix").bundle["model"]
    assert recorded["strategy"] == "linear-probe" and recorded["name"]


@pytest.mark.parametrize("meta, first, hint", [
    ({"task": "embedding", "model": {"name": "efficientnet_lite0", "strategy": "pretrained"}},
     "embedding: efficientnet_lite0's ImageNet features, frozen (this bundle was never trained "
     "on your images)", True),
    ({"task": "classification", "model": {"name": "resnet18", "strategy": "linear-probe"}},
     "embedding: resnet18's ImageNet features, frozen (a linear probe trains only the head)", True),
    ({"task": "classification", "model": {"name": "resnet18", "strategy": "finetune"}},
     "embedding: resnet18 fine-tuned on the images the bundle was trained on (pooled features)",
     False),
    ({"task": "classification", "model": {"name": "small_resnet", "strategy": "scratch"}},
     "embedding: small_resnet trained from scratch on the images the bundle was trained on", False),
])
def test_embedding_notes_name_the_embedding_and_point_frozen_ones_to_finetune(meta, first, hint):
    notes = embedding_notes(meta)
    assert notes[0] == first
    assert (len(notes) == 2 and "--strategy finetune" in notes[1]) == hint
    assert embedding_notes({"task": "classification"}) == []  # an index from before: silent


def test_progress_is_spelled_like_train_and_quiet_still_works(texture_index, texture_data):
    commands = typer.main.get_command(index_app).commands
    for name in ("build", "add", "dupes", "evaluate"):
        opts = {o for p in commands[name].params if not getattr(p, "hidden", False)
                for o in (*p.opts, *p.secondary_opts)}
        assert {"--progress", "--no-progress"} <= opts and "--quiet" not in opts, name
    for name, command in commands.items():
        missing = [p.name for p in command.params
                   if not getattr(p, "hidden", False) and not (getattr(p, "help", "") or "").strip()]
        assert missing == [], name
    old = _run("evaluate", texture_index, "--queries", texture_data, "--json", "-q")
    assert old.exit_code == 0, old.output
    assert "--quiet is deprecated; use --no-progress" in old.stderr
    assert json.loads(old.stdout)["n_queries"] == 144
