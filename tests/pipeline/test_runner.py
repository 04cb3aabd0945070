"""The pipeline end to end on the session's real run: the Contract's minimal file and
--json shape, gates against the run's own numbers, stage skipping by content hash (one
changed input re-runs exactly the stages that depend on it), a dry run, and a candidate
trained on deliberately corrupted labels gated out with the failing gate named (exit 3)."""

from __future__ import annotations

import csv
import json
import os

from sightwise.pipeline.runner import STAGE_NAMES, run_pipeline
from sightwise.pipeline.spec import load_spec


def _statuses(summary: dict) -> dict[str, str]:
    return {e["name"]: e["status"] for e in summary["stages"]}


def _run(project, **kwargs) -> dict:
    return run_pipeline(load_spec(project.toml), log=lambda _m: None, progress=False,
                        track=False, **kwargs)


def test_contract_toml_and_json_shape(base_run):
    root, res, summary = base_run
    assert set(summary) >= {"stages", "gates", "promoted", "version"}
    assert summary["promoted"] is True and summary["version"] == 1 and summary["exit_code"] == 0
    assert [e["name"] for e in summary["stages"]] == list(STAGE_NAMES)
    for e in summary["stages"]:
        assert e["status"] in ("ran", "skipped", "failed")
    assert _statuses(summary) == {**{n: "ran" for n in STAGE_NAMES}, "shadow": "skipped"}
    for g in summary["gates"]:  # the contract: "passed" is a bool
        assert {"name", "value", "threshold", "passed"} <= set(g)
        assert g["passed"] in (True, False) and g["status"] in ("passed", "failed")
    names = [g["name"] for g in summary["gates"]]
    assert names == ["max_leakage", "parity", "min_accuracy"]
    # could not be evaluated on a first run: listed apart, each with why
    regression, free = summary["skipped_gates"]
    assert (regression["name"], free["name"]) == ("max_regression", "label_free_accuracy")
    assert regression["passed"] is None and "no production version" in regression["detail"]
    assert free["status"] == "skipped" and "no monitored window" in free["detail"]
    # relative paths resolved against the TOML's folder, not the working directory
    assert summary["work"] == str(root / "project" / ".sightwise-pipeline" / "steel")


def test_gates_report_the_runs_own_numbers(base_run):
    root, _, summary = base_run
    work = root / "project" / ".sightwise-pipeline" / "steel"
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    acc = next(g for g in summary["gates"] if g["name"] == "min_accuracy")
    assert acc["value"] == metrics["test"]["accuracy"] and acc["threshold"] == 0.95
    assert acc["passed"] == (metrics["test"]["accuracy"] >= 0.95)
    parity = json.loads((work / "run" / "bundle" / "parity.json").read_text())
    gate = next(g for g in summary["gates"] if g["name"] == "parity")
    assert gate["value"] == parity["fp32"]["agreement"] and gate["passed"] is parity["passed"]
    rows = list(csv.DictReader(open(work / "data" / "manifest.csv")))
    assert len(rows) == 48 and {r["origin"] for r in rows} == {"dataset"}
    splits = next(e for e in summary["stages"] if e["name"] == "data")["figures"]["splits"]
    assert splits == {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "val", "test")}


def test_the_summary_is_an_mlflow_run(base_run):
    from sightwise.registry.store import mlflow_client

    root, _, summary = base_run
    os.environ["SIGHTWISE_HOME"] = str(root / "home")  # the autouse fixture restores it
    client = mlflow_client()
    exp = client.get_experiment_by_name("sightwise-pipeline")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["promoted"] == 1.0
    assert run.data.metrics["gates.min_accuracy.threshold"] == 0.95
    assert run.data.metrics["stages.train.ran"] == 1.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "pipeline")] == [
        "pipeline/summary.json"]


def test_one_changed_input_reruns_exactly_its_dependents(project):
    assert set(_statuses(_run(project)).values()) == {"skipped"}  # a moved copy stays cached

    project.edit("min_accuracy = 0.95", "min_accuracy = 0.9")
    s = _run(project)
    assert [n for n, st in _statuses(s).items() if st == "ran"] == ["gates"]
    assert s["exit_code"] == 0 and s["version"] == 1

    img = next((project.dir / "images" / "apple").iterdir())
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # touched only
    s = _run(project)
    assert [n for n, st in _statuses(s).items() if st == "ran"] == ["data"]

    project.edit("seed = 0", "seed = 1")
    plan = _run(project, dry_run=True)
    assert _statuses(plan) == {"data": "would-skip", "train": "would-run", "evaluate": "would-run",
                               "export": "would-run", "gates": "would-run", "register": "would-run",
                               "staging": "would-run", "shadow": "skipped",
                               "production": "would-run"}
    assert "changed: train" in plan["stages"][1]["reason"]
    s = _run(project)
    ran = [n for n, st in _statuses(s).items() if st == "ran"]
    assert ran == ["train", "evaluate", "export", "gates", "register", "staging", "production"]
    assert s["promoted"] and s["version"] == 2
    # another training seed, the same hash split: compared on the same test images
    comparison = json.loads((project.work / "state" / "gates.json").read_text())["outputs"]["comparison"]
    assert comparison["method"] == "same-test-data"


def test_corrupted_labels_are_gated_out_by_name(project, cli):
    """A labels CSV that moves 60 % of the images to a wrong class: the data stage merges it
    (with provenance), the candidate trains on it and fails min_accuracy: exit 3."""
    rows = sorted((project.dir / "images").rglob("*.png"))
    wrong = {"apple": "banana", "banana": "cherry", "cherry": "apple"}
    lines = ["path,label,annotator,time,model_version,suggested,suggested_p"]
    for i, p in enumerate(rows):
        if i % 5 < 3:
            lines.append(f"images/{p.parent.name}/{p.name},{wrong[p.parent.name]},mallory,"
                         "2026-12-01T00:00:00Z,1,,")
    (project.dir / "labels.csv").write_text("\n".join(lines) + "\n")
    project.edit('path = "images"', 'path = "images"\nlabels = "labels.csv"')
    s = _run(project)
    assert s["exit_code"] == 3 and s["outcome"] == "gated out" and not s["promoted"]
    assert s["reason"].startswith("min_accuracy: ")
    failed = [g["name"] for g in s["gates"] if g["status"] == "failed"]
    assert "min_accuracy" in failed
    st = _statuses(s)
    assert st["data"] == "ran" and st["gates"] == "failed" and "register" not in st
    data = next(e for e in s["stages"] if e["name"] == "data")["figures"]["labels"]
    assert data["relabelled"] == len(lines) - 1 and data["added"] == 0
    manifest = list(csv.DictReader(open(project.work / "data" / "manifest.csv")))
    relabelled = [r for r in manifest if r["origin"] == "relabelled"]
    assert len(relabelled) == len(lines) - 1 and {r["annotator"] for r in relabelled} == {"mallory"}
    from sightwise.registry.resolve import current_version

    assert current_version("steel")[0] == 1  # production untouched
    res = cli("run", str(project.toml), "--no-progress")  # cached verdict, same exit
    assert res.exit_code == 3 and "GATED OUT: min_accuracy" in res.stdout


def test_from_forces_the_stage_and_its_successors(project):
    s = _run(project, from_stage="gates")
    ran = [n for n, st in _statuses(s).items() if st == "ran"]
    assert ran == ["gates", "register", "staging", "production"] and s["version"] == 1


def test_the_label_free_gate_compares_the_latest_windows(project):
    """A stand-in monitor: production's latest window is estimated at 0.90, the candidate's
    (the unregistered run bundle) at 0.70: gated out by name, only the gates stage re-ran."""
    from sightwise.pipeline.seams import Seams

    (project.dir / "monitor-log").mkdir()
    (project.dir / "monitor-log" / "seg-1.jsonl").write_text("records\n")
    project.edit('name = "steel"', 'name = "steel"\n[monitor]\nlog = "monitor-log"')
    seen = []

    def window(bundle):
        seen.append(bundle.path)
        registered = "bundles" in bundle.path.parts
        return {"estimated_accuracy": 0.90 if registered else 0.70, "window": 3, "n": 100}

    s = _run(project, seams=Seams(window=window))
    assert [n for n, st in _statuses(s).items() if st not in ("skipped",)] == ["gates"]
    assert s["exit_code"] == 3 and s["reason"].startswith("label_free_accuracy: 0.7 < 0.9")
    assert len(seen) == 2


def test_the_audit_gate_stops_before_training(project):
    from sightwise.pipeline.seams import Seams

    project.edit("min_accuracy = 0.95", "min_accuracy = 0.95\nmax_label_error_share = 0.05")
    calls = []

    def audit(manifest, dataset, progress):
        calls.append(manifest)
        return {"share": 0.10, "suspects": 5, "n": 48, "source": str(manifest)}

    s = _run(project, seams=Seams(audit=audit))
    assert list(_statuses(s).items()) == [("data", "failed")]
    assert s["exit_code"] == 3 and s["reason"].startswith("max_label_error_share: 0.1 > 0.05")
    assert calls == [project.work / "data" / "manifest.csv"]


def test_the_shadow_stage_waits_for_n_live_predictions(project):
    from sightwise.shadowlog import ShadowWriter, shadow_record

    project.edit('name = "steel"', 'name = "steel"\n[shadow]\nmin_records = 3\nmin_agreement = 0.5')
    s = _run(project)
    assert s["exit_code"] == 3 and s["reason"].startswith("shadow_records: 0 < 3")
    assert _statuses(s)["staging"] == "skipped" and _statuses(s)["shadow"] == "failed"
    with ShadowWriter("steel") as w:
        for label in ("apple", "banana", "cherry"):
            w.append(shadow_record(model="steel", primary_version=1, primary_label=label,
                                   shadow_version=1, shadow_label=label))
    s = _run(project)
    assert s["exit_code"] == 0 and _statuses(s)["shadow"] == "ran"
    g = {x["name"]: x for x in s["gates"]}
    assert g["shadow_records"]["value"] == 3 and g["shadow_agreement"]["value"] == 1.0


def test_watch_runs_again_when_labels_arrive(project):
    import threading

    from sightwise.pipeline.runner import watch

    project.edit('path = "images"', 'path = "images"\nlabels = "labels.csv"')
    spec = load_spec(project.toml)
    stop, calls = threading.Event(), []

    def run():
        calls.append(len(calls))
        if len(calls) == 1:  # labels arrive while the first run is busy
            (project.dir / "labels.csv").write_text(
                "path,label,annotator,time,model_version,suggested,suggested_p\n")
        else:
            threading.Timer(0.2, stop.set).start()  # then nothing changes: no third run
        return {"outcome": "promoted", "exit_code": 0}

    assert watch(spec, run, interval=0.01, stop=stop, log=lambda _m: None) == 2
