"""`index build` streamed: the same items and vectors as the reference build
(`search.api.build_index`: embed everything, then index), undecodable files skipped and
named, and `--index auto` saying which index it chose."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from sightwise.search.api import build_index as reference_build
from sightwise.search.cli import index_app
from sightwise.search.store import SearchIndex


def test_streamed_build_equals_the_reference(scale_bundle, folder, tmp_path):
    first = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    (first / "zz_broken.png").write_bytes(b"not an image")  # inside a class: listed
    ref = reference_build(folder, scale_bundle, tmp_path / "ref", progress=False,
                          log=lambda _m: None)
    res = CliRunner().invoke(index_app, ["build", str(folder), "--bundle", str(scale_bundle),
                                         "--out", str(tmp_path / "got"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "index auto: 25 images -> flat" in res.output
    assert "skipped" in res.output and "zz_broken.png" in res.output
    got = SearchIndex.load(tmp_path / "got")
    key = lambda it: it["path"]  # noqa: E731
    assert [{k: it[k] for k in ("path", "label", "split", "sha256")} for it in
            sorted(got.items, key=key)] == \
        [{k: it[k] for k in ("path", "label", "split", "sha256")} for it in
         sorted(ref.items, key=key)]
    rows = {it["path"]: i for i, it in enumerate(ref.items)}
    order = [rows[it["path"]] for it in got.items]
    np.testing.assert_allclose(got.vectors, ref.vectors[order], atol=1e-5)
    res = CliRunner().invoke(index_app, ["build", str(folder), "--bundle", str(scale_bundle),
                                         "--out", str(tmp_path / "ivf"), "--index", "ivf",
                                         "--nprobe", "64", "--quiet"])
    assert res.exit_code == 0, res.output
    ivf = SearchIndex.load(tmp_path / "ivf")
    assert ivf.kind == "ivf"
    _, ids = ivf.search(got.vectors[:5], 1)  # every cell scanned: each finds itself
    assert [ivf.item(i)["path"] for i in ids[:, 0]] == [it["path"] for it in got.items[:5]]
