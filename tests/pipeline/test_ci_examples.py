"""docs/examples: the GitHub Actions workflow and the GitLab CI file parse, trigger on a
dataset change, and their command lines -- run as the CI would, with `sightwise` on PATH --
run the pipeline on a small project and publish its summary; the full PIPELINE.toml
example names only keys the pipeline knows."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"


@pytest.fixture
def ci_project(base_run, tmp_path):
    """A checkout: the base run's project with its stage cache, and its model store where
    the examples keep it (.sightwise-home); `sightwise` on PATH runs this source tree."""
    root = base_run[0]
    checkout = tmp_path / "checkout"
    shutil.copytree(root / "project", checkout, symlinks=True)
    shutil.copytree(root / "home", checkout / ".sightwise-home", symlinks=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "sightwise"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; from sightwise.cli import app; "
                    "app(prog_name=\"sightwise\")' \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("SIGHTWISE_HOME", None)
    return checkout, env


def _sh(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _triggers(doc: dict) -> dict:
    return doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as true


def test_github_actions_workflow(ci_project):
    checkout, env = ci_project
    doc = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    assert "data/**" in _triggers(doc)["push"]["paths"]
    job = doc["jobs"]["pipeline"]
    out_file, summary_file = checkout / "gh-output", checkout / "gh-summary.md"
    env = {**env, "GITHUB_OUTPUT": str(out_file), "GITHUB_STEP_SUMMARY": str(summary_file)}
    env.update({k: v.replace("${{ github.workspace }}", str(checkout)) for k, v in job["env"].items()})
    outputs: dict[str, str] = {}
    ran = []
    for step in job["steps"]:
        script = step.get("run")
        if script is None or "pip install" in script:
            continue  # actions (checkout, cache, upload) and the install are the CI's own
        script = re.sub(r"\$\{\{ steps\.(\w+)\.outputs\.(\w+) \}\}",
                        lambda m: outputs[m.group(2)], script)
        res = _sh(script, checkout, env)
        ran.append((step["name"], res.returncode))
        if out_file.exists():
            outputs.update(line.split("=", 1) for line in out_file.read_text().splitlines())
        assert res.returncode == 0, (step["name"], res.stderr[-2000:])
    assert [name for name, _ in ran] == ["Run the pipeline", "Publish the summary",
                                         "Fail unless promoted"]
    summary = json.loads((checkout / "pipeline-summary.json").read_text())
    assert summary["promoted"] and outputs["exit_code"] == "0"
    md = summary_file.read_text()
    assert "**PROMOTED steel v1 to production (exit 0)**" in md and "| min_accuracy | passed |" in md


def test_gitlab_ci_file(ci_project):
    checkout, env = ci_project
    doc = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    job = doc["model-pipeline"]
    assert "data/**/*" in job["rules"][0]["changes"]
    env = {**env, "CI_PROJECT_DIR": str(checkout)}
    env.update({k: v.replace("$CI_PROJECT_DIR", str(checkout)) for k, v in job["variables"].items()})
    assert all(line.startswith("pip install") for line in job["before_script"])  # the CI's own
    res = _sh("\n".join(job["script"]), checkout, env)
    assert res.returncode == 0, res.stderr[-2000:]
    for path in job["artifacts"]["paths"]:
        assert (checkout / path).stat().st_size > 0
    assert "PROMOTED steel v1" in res.stdout  # the Markdown also goes to the job log


def test_a_gated_out_run_fails_the_github_job(ci_project):
    """The workflow's steps on a project whose calibration gate cannot pass (ECE is never
    exactly 0): the summary is still published, then the job fails with the code, 3."""
    checkout, env = ci_project
    toml = checkout / "PIPELINE.toml"
    toml.write_text(toml.read_text().replace("min_accuracy = 0.95", "min_accuracy = 0.95\n"
                                             "max_ece = 0.0"))
    doc = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    steps = {s.get("name"): s.get("run") for s in doc["jobs"]["pipeline"]["steps"]}
    env = {**env, "SIGHTWISE_HOME": str(checkout / ".sightwise-home"),
           "GITHUB_OUTPUT": str(checkout / "out"), "GITHUB_STEP_SUMMARY": str(checkout / "md")}
    assert _sh(steps["Run the pipeline"], checkout, env).returncode == 0
    assert _sh(steps["Publish the summary"], checkout, env).returncode == 0
    assert (checkout / "out").read_text() == "exit_code=3\n"
    assert "**GATED OUT: max_ece: " in (checkout / "md").read_text()
    assert _sh("exit 3", checkout, env).returncode == 3  # what the last step becomes


def test_the_full_example_names_only_known_keys(tmp_path):
    import tomllib

    from sightwise.pipeline.spec import parse_spec

    doc = tomllib.loads((EXAMPLES / "PIPELINE.toml").read_text())
    (tmp_path / "data" / "images").mkdir(parents=True)
    spec = parse_spec(doc, tmp_path / "PIPELINE.toml")
    assert spec.shadow["min_records"] == 200 and spec.labels == tmp_path / "labels.csv"
    assert set(spec.gates) >= {"min_recall", "max_latency_p95_ms", "max_label_error_share"}
