"""`--engine ray` gives what the single-machine engine gives: the same prediction rows,
index vectors and inspection scores, on a local Ray the test starts with 2 CPUs and stops."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sightwise.predict import predict_to_file
from sightwise.scale.output import read_rows

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # Ray starts in ~5 s idle, ~15 s on a loaded 2-core machine


@pytest.fixture(scope="module")
def local_ray():
    # One CPU per actor, one left for the read tasks (ray_engine.pool_size); no dashboard.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _by_path(rows):
    return {r["path"]: r for r in rows}


def test_predictions_equal_the_local_engine(local_ray, scale_bundle, folder, tmp_path):
    (folder / "a").mkdir()
    (folder / "a" / "dir.png").mkdir()  # refused before Ray: "is a directory"
    args = dict(recursive=True, progress=False, batch_size=4, log=lambda _m: None)
    predict_to_file(scale_bundle, [folder], tmp_path / "local.csv", **args)
    summary = predict_to_file(scale_bundle, [folder], tmp_path / "ray.parquet", engine="ray",
                              **args)
    local, remote = _by_path(read_rows(tmp_path / "local.csv")), _by_path(read_rows(tmp_path / "ray.parquet"))
    assert summary["written"] == len(local) == 26 and set(remote) == set(local)
    for path, want in local.items():
        got = remote[path]
        probs = [k for k in want if k.startswith("probability")]
        assert {k: v for k, v in got.items() if k not in probs} == \
            {k: v for k, v in want.items() if k not in probs}
        assert [got[k] for k in probs] == pytest.approx([want[k] for k in probs], abs=1e-6)


def test_index_vectors_equal_the_local_engine(local_ray, scale_bundle, folder, tmp_path):
    from sightwise.scale.embed import build_index

    quiet = dict(progress=False, log=lambda _m: None)
    local = build_index(folder, scale_bundle, tmp_path / "l", **quiet)
    remote = build_index(folder, scale_bundle, tmp_path / "r", engine="ray", batch_size=4, **quiet)
    rows = {it["path"]: i for i, it in enumerate(local.items)}
    assert sorted(rows) == sorted(it["path"] for it in remote.items)
    order = [rows[it["path"]] for it in remote.items]
    np.testing.assert_allclose(remote.vectors, local.vectors[order], atol=1e-5)


def test_inspection_scores_equal_the_local_engine(local_ray, detector, tmp_path):
    from sightwise.anomaly.detector import Detector
    from sightwise.scale.inspect import score_stream

    det_dir, data = detector
    det = Detector(det_dir, threads=1)
    for engine in ("local", "ray"):
        score_stream(det, data["defect"], tmp_path / engine, engine=engine, batch_size=4,
                     progress=False)
    read = {}
    for engine in ("local", "ray"):
        with open(tmp_path / engine / "scores.csv", newline="") as f:
            read[engine] = {r["path"]: r for r in csv.DictReader(f)}
    assert set(read["ray"]) == set(read["local"]) and len(read["local"]) == 6
    for path, want in read["local"].items():
        got = read["ray"][path]
        assert float(got["score"]) == pytest.approx(float(want["score"]), rel=1e-4)
        assert (got["verdict"], got["overlay"]) == (want["verdict"], want["overlay"])
        assert (tmp_path / "ray" / got["overlay"]).is_file()
