"""Resume after kill -9: a run is SIGKILLed inside each stage in turn (at the end of its
work, just before it is recorded; training also mid-way); every next run skips exactly the
stages that had finished and resumes at the killed one; the last run promotes, with one
registered version and one move per alias although register and both promotions were
killed after doing their work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sightwise.pipeline.runner import STAGE_NAMES

KILLER = Path(__file__).with_name("_killer.py")
TOML = """\
[data]
path = "images"
[train]
strategy = "linear-probe"
seed = 0
[gates]
min_accuracy = 0.9
[register]
name = "resume"
"""


def _runs(log: Path) -> list[list[str]]:
    """Per run: the lines the runner logged about each stage."""
    runs = []
    for line in log.read_text().splitlines():
        if line == "=== run":
            runs.append([])
        elif re.match(r"\[\w+\] |resuming: ", line):
            runs[-1].append(line)
    return runs


@pytest.mark.slow
def test_kill_9_inside_each_stage_then_resume(base_run, tmp_path):
    root = base_run[0]
    proj = tmp_path / "project"
    shutil.copytree(root / "project" / "images", proj / "images")
    (proj / "PIPELINE.toml").write_text(TOML)
    shutil.copytree(root / "home", tmp_path / "home")  # a store with its schema made
    work = proj / ".sightwise-pipeline" / "resume"
    log = tmp_path / "runs.log"
    env = {**os.environ, "SIGHTWISE_HOME": str(tmp_path / "home"), "SIGHTWISE_TRACKING": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    killer = subprocess.Popen([sys.executable, str(KILLER)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert json.loads(killer.stdout.readline())["ready"]
        finished_before = []
        stages = [s for s in STAGE_NAMES if s != "shadow"]
        plan = [("data", "end"), ("train", "marker"), *[(s, "end") for s in stages[1:]],
                (None, None)]
        for stage, at in plan:
            finished_before.append({s for s in stages if (work / "state" / f"{s}.json").exists()})
            killer.stdin.write(json.dumps({"toml": str(proj / "PIPELINE.toml"), "log": str(log),
                                           "kill_at": stage, "at": at, "delay": 1.0,
                                           "work": str(work)}) + "\n")
            killer.stdin.flush()
            answer = json.loads(killer.stdout.readline())
            assert answer == ({"killed": False, "rc": 0} if stage is None else
                              {"killed": True, "rc": -9}), (stage, at, answer)
    finally:
        killer.stdin.close()
        killer.wait(timeout=60)
    runs = _runs(log)
    assert len(runs) == len(plan)
    for done, lines in zip(finished_before, runs, strict=True):
        skipped = {m.group(1) for m in map(re.compile(r"\[(\w+)\] skipped").match, lines) if m}
        ran = [m.group(1) for m in map(re.compile(r"\[(\w+)\] running").match, lines) if m]
        assert skipped == done, (done, lines)
        assert not ran or ran[0] == next(s for s in stages if s not in done), lines
    for (stage, _), lines in zip(plan, runs[1:], strict=False):
        assert lines[0] == f"resuming: the last run stopped during {stage}", lines
    final = json.loads((work / "summary.json").read_text())
    assert final["promoted"] and final["version"] == 1

    os.environ["SIGHTWISE_HOME"] = str(tmp_path / "home")  # the autouse fixture restores it
    from sightwise.registry.promote import read_history
    from sightwise.registry.resolve import current_version
    from sightwise.registry.store import mlflow_client
    from sightwise.registry.versions import search_versions

    assert [int(v.version) for v in search_versions(mlflow_client(), "resume")] == [1]
    assert current_version("resume")[0] == 1 and current_version("resume", "staging")[0] == 1
    moves = [(e["alias"], e["to"], e["state"]) for e in read_history("resume")
             if e["state"] == "done"]
    assert moves == [("staging", 1, "done"), ("production", 1, "done")]
