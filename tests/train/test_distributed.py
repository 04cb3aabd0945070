"""Distributed training: the collective helpers on a real 2-rank gloo group against the
single-process answer, and `train --nproc 2` end to end (one bundle, the same accuracy as
one process on the same small set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sightwise.cli import app
from sightwise.train import distributed

SRC = str(Path(__file__).parents[2] / "src")

RANK_SCRIPT = r"""
import json, sys
import numpy as np, torch.distributed as dist
from sightwise.train import distributed as D
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
x = np.arange(21, dtype=np.float32).reshape(7, 3)
out = {"shard": D.shard(np.arange(11)).tolist(), "short": D.shard(np.arange(3)).tolist(),
       "agree": D.agree(10.0 + rank), "total": D.total(rank + 1),
       "evaluate": D.evaluate(lambda m, rows: rows[:, :2] * 2, None, x).tolist(),
       "budget": D.SyncedBudget(100.0).left(), "active": D.active()}
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_helpers_on_two_ranks_equal_one_process(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), str(tmp_path / "rdzv")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    r0, r1 = outs
    # DistributedSampler's split: disjoint, together the whole batch
    assert r0["shard"] == list(range(0, 11, 2)) and r1["shard"] == list(range(1, 11, 2))
    assert r0["short"] == r1["short"] == []  # < 2 rows each: every rank skips the step
    assert r0["agree"] == r1["agree"] == 10.0  # rank 0's value
    assert r0["total"] == r1["total"] == 3.0
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    assert r0["evaluate"] == r1["evaluate"] == (x[:, :2] * 2).tolist()  # the order kept
    assert r0["budget"] == r1["budget"] and r0["active"] and r1["active"]


def test_helpers_are_no_ops_in_one_process():
    batch = np.arange(5)
    assert distributed.shard(batch) is batch and distributed.agree(3.5) == 3.5
    assert not distributed.active()
    b = distributed.Budget(10.0)
    assert distributed.synced(b) is b


@pytest.mark.slow
def test_two_processes_write_one_bundle_as_accurate_as_one(image_folder_factory, tmp_path,
                                                            monkeypatch):
    data = image_folder_factory(tmp_path / "data", {"a": 40, "b": 40, "c": 40}, size=32)
    args = ["train", str(data), "--strategy", "scratch", "--img-size", "32", "--epochs", "6",
            "--batch-size", "8", "--augment", "none", "--members", "1", "--no-tta",
            "--threads", "1", "--no-progress"]
    monkeypatch.setenv("PYTHONPATH", SRC)  # the ranks import this checkout
    runner = CliRunner()
    two = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--nproc", "2"])
    assert two.exit_code == 0, two.output
    one = runner.invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    run = tmp_path / "two"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert not (run / "cache" / "ranks").exists()
    files = {p.name for p in (run / "bundle").iterdir()}
    assert {"bundle.json", "model.onnx", "weights.safetensors"} <= files
    m2 = json.loads((run / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert m2["distributed"]["world_size"] == 2 and m2["export"]["fp32_passed"]
    assert m1["test"]["n"] == m2["test"]["n"] == 18
    # Same accuracy within noise: 18 test images, an easy set; both learn it.
    assert m2["test"]["accuracy"] >= 0.9 and abs(m2["test"]["accuracy"] - m1["test"]["accuracy"]) <= 0.12
    from sightwise.predict import predict_files

    image = next((data / "b").iterdir())
    assert predict_files(run / "bundle", [image], top_k=1)[0].label == "b"
