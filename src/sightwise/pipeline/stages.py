"""The stages, in order: data -> train -> evaluate -> export -> gates -> register -> staging
-> shadow (optional) -> production.

Each stage is three plain functions: `inputs(ctx, previous_inputs)` says what it depends on
(cheap: upstream outputs, options, file fingerprints), `run(ctx)` does the work and returns
its outputs (JSON), `valid(ctx, outputs)` says whether cached outputs are still on disk.
Outputs may carry "gates" (each measured value with its threshold) and "stop" (the reason
the candidate goes no further). Heavy imports (torch, MLflow) happen inside `run`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sightwise import __version__
from sightwise.core import atomic_write_json, sha256_path
from sightwise.errors import DataError, SightwiseError
from sightwise.pipeline import data as data_mod
from sightwise.pipeline.gates import (
    describe_failure,
    first_failure,
    gate,
    machine_gates,
    measure_graph,
    per_class_recall,
    quality_gates,
    regression_gates,
    skipped,
)
from sightwise.pipeline.seams import Seams, audit_gate, label_free_gate
from sightwise.pipeline.spec import PipelineSpec
from sightwise.pipeline.state import digest, fingerprint

DATA_GATES = ("max_leakage", "max_label_conflicts", "max_bad_file_share", "max_label_error_share")


@dataclass
class Context:
    spec: PipelineSpec
    work: Path
    seams: Seams
    log: Callable[[str], None]
    progress: bool = True
    outputs: dict = field(default_factory=dict)
    _production: tuple | None = None

    @property
    def manifest(self) -> Path:
        return self.work / "data" / "manifest.csv"

    @property
    def run_dir(self) -> Path:
        return self.work / "run"

    @property
    def bundle_dir(self) -> Path:
        return self.run_dir / "bundle"

    def production(self) -> tuple[int, str] | None:
        """(version, bundle.json sha256) holding NAME@production, looked up once a run."""
        if self._production is None:
            from sightwise.registry.resolve import current_version

            held = current_version(self.spec.name, "production")
            self._production = (None,) if held is None else (
                held[0], _sha_or_none(held[1] / "bundle.json"))
        return None if self._production == (None,) else self._production

    def production_bundle(self):
        held = self.production()
        if held is None:
            return None
        from sightwise.registry.resolve import open_version

        return open_version(self.spec.name, held[0])


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_path(path)
    except OSError:
        return None


def _stop(g: dict) -> dict:
    return {"outcome": "gated out", "reason": describe_failure(g)}


def _with_stop(outputs: dict) -> dict:
    bad = first_failure(outputs.get("gates", []))
    return {**outputs, "stop": _stop(bad)} if bad else outputs


# -- data ---------------------------------------------------------------------------------------


def _where(path: Path | None, root: Path) -> str | None:
    """A path as the TOML names it relative to its folder, so a project that moves as a
    whole (a CI checkout in another directory) keeps its cache."""
    if path is None:
        return None
    try:
        return path.absolute().relative_to(root).as_posix()
    except ValueError:
        return str(path.absolute())


def data_inputs(ctx: Context, prev: dict | None) -> dict:
    s = ctx.spec
    labels = s.labels
    return {"data": _where(s.data, s.root), "fingerprint": fingerprint(s.data, exclude=ctx.work),
            "labels": _where(labels, s.root),
            "labels_fingerprint": fingerprint(labels) if labels and labels.exists() else None,
            "split": s.split, "split_seed": s.train.get("split_seed", 0),
            "class_from": s.class_from, "allow_outside": s.allow_outside,
            "gates": {k: s.gates[k] for k in DATA_GATES if k in s.gates}}


def data_run(ctx: Context) -> dict:
    s = ctx.spec
    rows, notes, root = data_mod.dataset_rows(s)
    provenance = None
    if s.labels is not None and s.labels.is_file():
        rows, provenance = data_mod.merge_labels(rows, s.labels, [root, s.labels.parent],
                                                 allow_outside=s.allow_outside)
    elif s.labels is not None:
        notes.append(f"labels file {s.labels} does not exist yet: nothing merged")
    bad = data_mod.find_bad_files(rows, progress=ctx.progress)
    for b in bad:
        ctx.log(f"skipped {b['path']}: {b['reason']}")
    bad_paths = {b["path"] for b in bad}
    rows = [r for r in rows if r.source not in bad_paths]
    if s.split == "hash":
        rows, moved = data_mod.stable_splits(rows, int(s.train.get("split_seed", 0)))
        notes += moved
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise DataError(f"{s.data}: {len(rows)} usable image(s) in {len(classes)} class(es); "
                        "training needs at least 2 classes")
    leak, conflicts = data_mod.leakage_and_conflicts(rows)
    sha = data_mod.write_manifest(rows, ctx.manifest)
    splits = {sp: sum(r.split == sp for r in rows) for sp in ("train", "val", "test")}
    atomic_write_json(ctx.work / "data" / "validation.json", {
        "bad_files": bad, "leakage": leak, "label_conflicts": conflicts, "notes": notes,
        "provenance": provenance, "splits": splits})
    for note in notes:
        ctx.log(note)
    gates = _data_gates(ctx, rows, bad, leak, conflicts)
    return _with_stop({
        "manifest": "data/manifest.csv", "manifest_sha256": sha, "gates": gates,
        "figures": {"images": len(rows), "classes": len(classes), "bad_files": len(bad),
                    "leakage": len(leak), "label_conflicts": len(conflicts),
                    "splits": splits if s.split == "hash" or all(r.split for r in rows)
                    else "drawn at training (split_seed)",
                    "labels": provenance}})


def _data_gates(ctx: Context, rows, bad, leak, conflicts) -> list[dict]:
    g, out = ctx.spec.gates, []
    if "max_leakage" in g:
        if any(not r.split for r in rows):
            out.append(skipped("max_leakage", g["max_leakage"], 'splits are drawn at training '
                               '(split = "seed"); train reports leakage', stage="data"))
        else:
            out.append(gate("max_leakage", len(leak), g["max_leakage"], at_most=True,
                            stage="data", detail="identical files in more than one split"))
    if "max_label_conflicts" in g:
        out.append(gate("max_label_conflicts", len(conflicts), g["max_label_conflicts"],
                        at_most=True, stage="data", detail="identical files, different labels"))
    if "max_bad_file_share" in g:
        total = len(rows) + len(bad)
        out.append(gate("max_bad_file_share", len(bad) / max(total, 1), g["max_bad_file_share"],
                        at_most=True, stage="data", detail=f"{len(bad)} of {total} unreadable"))
    if "max_label_error_share" in g:
        out.append(audit_gate(ctx.seams, ctx.manifest, ctx.spec.data, g["max_label_error_share"],
                              progress=ctx.progress, stage="data"))
    return out


def data_valid(ctx: Context, out: dict) -> bool:
    return _sha_or_none(ctx.manifest) == out.get("manifest_sha256")


# -- train, evaluate, export ----------------------------------------------------------------------


def train_inputs(ctx: Context, prev: dict | None) -> dict:
    return {"manifest_sha256": ctx.outputs["data"]["manifest_sha256"],
            "train": dict(ctx.spec.train), "sightwise": __version__}


def train_run(ctx: Context) -> dict:
    from sightwise.train.pipeline import run_training

    shutil.rmtree(ctx.run_dir, ignore_errors=True)  # a killed run's leftovers
    cfg = ctx.spec.train_config(ctx.manifest, ctx.run_dir, progress=ctx.progress)
    metrics = run_training(cfg, log=ctx.log)
    return {"run": "run", "weights_sha256": sha256_path(ctx.bundle_dir / "weights.safetensors"),
            "metrics_sha256": sha256_path(ctx.run_dir / "metrics.json"),
            "figures": {"strategy": metrics["strategy"]["chosen"],
                        "images": metrics["data"]["n_images"],
                        "train_seconds": round(metrics["timing"]["train_seconds"], 1)}}


def train_valid(ctx: Context, out: dict) -> bool:
    return (_sha_or_none(ctx.bundle_dir / "weights.safetensors") == out.get("weights_sha256")
            and _sha_or_none(ctx.run_dir / "metrics.json") == out.get("metrics_sha256"))


def evaluate_inputs(ctx: Context, prev: dict | None) -> dict:
    return {"train": digest(ctx.outputs["train"])}


def evaluate_run(ctx: Context) -> dict:
    """The candidate's numbers on its test split (calibrated), per class included."""
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text(encoding="utf-8"))
    test, classes = metrics["test"], metrics["data"]["classes"]
    recall = per_class_recall(test["confusion_matrix"])
    ev = {k: test.get(k) for k in ("n", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci",
                                   "balanced_accuracy", "auroc", "ece", "ece_uncalibrated")}
    ev["per_class_recall"] = {c: recall[i] for i, c in enumerate(classes)}
    ev["per_class_support"] = {c: test["per_class"][c]["support"] for c in classes}
    atomic_write_json(ctx.work / "evaluation.json", ev)
    return {"evaluation": ev, "figures": {k: ev[k] for k in ("n", "accuracy", "macro_f1", "ece")}}


def export_inputs(ctx: Context, prev: dict | None) -> dict:
    return {"train": digest(ctx.outputs["train"]), "export": dict(ctx.spec.export)}


def export_run(ctx: Context) -> dict:
    from sightwise.export.api import export_bundle
    from sightwise.export.parity import GATE, ParityError
    from sightwise.registry.tracking import log_run

    exp = ctx.spec.export
    try:
        export_bundle(ctx.bundle_dir, int8=exp["int8"], opset=exp["opset"], log=ctx.log,
                      progress=ctx.progress)
    except ParityError:
        pass  # the bundle is marked; the parity gate below fails and names why
    else:
        from sightwise.workflows import add_reference

        add_reference(ctx.bundle_dir, log=ctx.log)  # the drift profile the monitor needs
    report = json.loads((ctx.bundle_dir / "parity.json").read_text(encoding="utf-8"))
    failed = [c["message"] for c in report["checks"] if not c["passed"]]
    fp32 = report["fp32"]
    parity = {"name": "parity", "value": fp32["agreement"], "threshold": GATE.fp32_min_agreement,
              "passed": bool(report["passed"]), "status": "passed" if report["passed"] else "failed",
              "stage": "export",
              "detail": "; ".join(failed) or (f"fp32 vs PyTorch on {report['n']} {report['split']} "
                                              f"images, max |dp| {fp32['max_abs_dprob']:.1e}")}
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text(encoding="utf-8"))
    meta = json.loads((ctx.bundle_dir / "bundle.json").read_text(encoding="utf-8"))
    log_run("train", ctx.run_dir, metrics, meta.get("config", {}), ctx.bundle_dir, log=ctx.log)
    return _with_stop({
        "bundle_json_sha256": sha256_path(ctx.bundle_dir / "bundle.json"), "gates": [parity],
        "figures": {"fp32_agreement": fp32["agreement"], "max_abs_dprob": fp32["max_abs_dprob"],
                    "int8_agreement": (report.get("int8") or {}).get("agreement")}})


def export_valid(ctx: Context, out: dict) -> bool:
    return _sha_or_none(ctx.bundle_dir / "bundle.json") == out.get("bundle_json_sha256")


# -- gates ----------------------------------------------------------------------------------------


def machine_id() -> str:
    return f"{platform.node()}|{platform.machine()}|{os.cpu_count()}"


def _live_fingerprint(ctx: Context) -> str | None:
    log = ctx.spec.monitor_log
    return fingerprint(log) if log is not None and log.exists() else None


def gates_inputs(ctx: Context, prev: dict | None) -> dict:
    cand = ctx.outputs["export"]["bundle_json_sha256"]
    held = ctx.production()
    baseline = held[1] if held else None
    if baseline == cand and prev:  # promoted since: keep the baseline it was gated against
        baseline = prev.get("baseline")
    return {"bundle": cand, "evaluation": digest(ctx.outputs["evaluate"]),
            "gates": dict(ctx.spec.gates), "baseline": baseline, "machine": machine_id(),
            "int8": ctx.spec.export["int8"],
            "live": None if ctx.spec.shadow else _live_fingerprint(ctx)}


def gates_run(ctx: Context) -> dict:
    from sightwise.bundle import load_bundle
    from sightwise.registry.compare import compare_versions

    limits = ctx.spec.gates
    bundle = load_bundle(ctx.bundle_dir)
    out = quality_gates(ctx.outputs["evaluate"]["evaluation"], limits)
    held, comparison, missing = ctx.production(), None, "no production version to compare with"
    try:
        holder = ctx.production_bundle()
    except SightwiseError as exc:  # as `models promote` does: a broken holder must not
        holder = None              # block its own replacement
        missing = f"production v{held[0]} cannot be opened ({exc})"
    if holder is not None:
        comparison = compare_versions(bundle, holder, log=ctx.log)
    out += regression_gates(comparison, limits, f"production v{held[0]}" if held else None,
                            missing=missing)
    int8 = bool(ctx.spec.export["int8"] and bundle.meta.export and bundle.meta.export.int8_passed)
    measured = measure_graph(bundle, int8=int8)
    out += machine_gates(measured, limits)
    if not ctx.spec.shadow:  # with shadow traffic the candidate's window comes later
        out.append(label_free_gate(ctx.seams, bundle, holder, limits["max_label_free_drop"],
                                   stage="gates"))
    return _with_stop({
        "gates": out, "comparison": comparison, "baseline_version": held[0] if held else None,
        "latency": measured,
        "figures": {"p95_ms": round(measured["p95_ms"], 2), "model_mb": round(measured["model_mb"], 2),
                    "compared": comparison["method"] if comparison else "no production version",
                    "gates_failed": sum(g["status"] == "failed" for g in out)}})


# -- register, promote, shadow ----------------------------------------------------------------------


def register_inputs(ctx: Context, prev: dict | None) -> dict:
    # The default store lives in $SIGHTWISE_HOME: `register_valid` checks the version is
    # there; a tracking server is named here so switching servers registers again.
    return {"bundle": ctx.outputs["export"]["bundle_json_sha256"], "name": ctx.spec.name,
            "store": os.environ.get("MLFLOW_TRACKING_URI")}


def register_run(ctx: Context) -> dict:
    """Register the bundle, or find the version a killed earlier run already registered."""
    from sightwise.registry.resolve import SHA_TAG
    from sightwise.registry.store import mlflow_client
    from sightwise.registry.versions import register_bundle, search_versions

    sha = ctx.outputs["export"]["bundle_json_sha256"]
    for mv in search_versions(mlflow_client(), ctx.spec.name):
        if (mv.tags or {}).get(SHA_TAG) == sha:
            ctx.log(f"{ctx.spec.name} v{mv.version} already holds this bundle")
            return {"version": int(mv.version), "figures": {"version": int(mv.version)}}
    rec = register_bundle(ctx.bundle_dir, ctx.spec.name, log=ctx.log)
    return {"version": rec["version"], "figures": {"version": rec["version"]}}


def register_valid(ctx: Context, out: dict) -> bool:
    from sightwise.registry.store import version_dir

    return (_sha_or_none(version_dir(ctx.spec.name, out["version"]) / "bundle.json")
            == ctx.outputs["export"]["bundle_json_sha256"])


def _version(ctx: Context) -> int:
    return int(ctx.outputs["register"]["version"])


def _promote(ctx: Context, alias: str, **kwargs) -> dict:
    from sightwise.registry.promote import promote
    from sightwise.registry.store import PromotionRefused

    v = _version(ctx)
    try:
        res = promote(ctx.spec.name, v, alias=alias, tolerance=ctx.spec.gates["max_regression"],
                      reason="sightwise pipeline", **kwargs)
    except PromotionRefused as exc:
        g = {"name": f"registry_{alias}", "value": None, "threshold": None, "passed": False,
             "status": "failed", "stage": alias, "detail": str(exc)}
        return {"gates": [g], "stop": _stop(g)}
    return {"alias": alias, "from": res["from"], "to": v,
            "figures": {alias: f"v{v}" if res["from"] in (None, v) else f"v{res['from']} -> v{v}"}}


def staging_inputs(ctx: Context, prev: dict | None) -> dict:
    return {"name": ctx.spec.name, "version": _version(ctx),
            "tolerance": ctx.spec.gates["max_regression"]}


def staging_run(ctx: Context) -> dict:
    return _promote(ctx, "staging", against="production")


def shadow_inputs(ctx: Context, prev: dict | None) -> dict:
    from sightwise.shadowlog import shadow_dir

    folder = shadow_dir(ctx.spec.name)
    return {"name": ctx.spec.name, "version": _version(ctx), "shadow": dict(ctx.spec.shadow),
            "log": fingerprint(folder) if folder.is_dir() else None,
            "labels": ctx.outputs["data"]["manifest_sha256"], "live": _live_fingerprint(ctx),
            "max_label_free_drop": ctx.spec.gates["max_label_free_drop"]}


def shadow_run(ctx: Context) -> dict:
    from sightwise.bundle import load_bundle
    from sightwise.shadowlog import shadow_summary

    labels = {r["sha256"]: r["label"] for r in _manifest_rows(ctx.manifest) if r["sha256"]}
    summary = shadow_summary(ctx.spec.name, _version(ctx), labels=labels)
    out = shadow_gates(summary, ctx.spec.shadow)
    out.append(label_free_gate(ctx.seams, load_bundle(ctx.bundle_dir), ctx.production_bundle(),
                               ctx.spec.gates["max_label_free_drop"], stage="shadow"))
    return _with_stop({"summary": summary, "gates": out,
                       "figures": {k: summary[k] for k in ("n", "errors", "agreement", "labelled")}})


def shadow_gates(summary: dict, rules) -> list[dict]:
    n = summary["n"]
    out = [gate("shadow_records", n, rules["min_records"], at_most=False, stage="shadow",
                detail=f"{summary['errors']} shadow error(s) not counted")]
    if "min_agreement" in rules:
        out.append(gate("shadow_agreement", summary["agreement"], rules["min_agreement"],
                        at_most=False, stage="shadow", detail=f"on {n} requests") if n else
                   skipped("shadow_agreement", rules["min_agreement"], "no shadow predictions",
                           stage="shadow"))
    if "max_labelled_drop" in rules:
        if summary["labelled"]:
            out.append(gate("shadow_labelled_accuracy", summary["shadow_accuracy"],
                            summary["primary_accuracy"] - rules["max_labelled_drop"],
                            at_most=False, stage="shadow",
                            detail=f"on {summary['labelled']} labelled requests: primary "
                                   f"{summary['primary_accuracy']:.4f}"))
        else:
            out.append(skipped("shadow_labelled_accuracy", None, "no labelled shadow request yet",
                               stage="shadow"))
    return out


def _manifest_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def production_inputs(ctx: Context, prev: dict | None) -> dict:
    shadow = ctx.outputs.get("shadow")
    return {"name": ctx.spec.name, "version": _version(ctx),
            "tolerance": ctx.spec.gates["max_regression"],
            "shadow": digest(shadow) if shadow else None}


def production_run(ctx: Context) -> dict:
    kwargs = {}
    if ctx.spec.shadow:
        kwargs = {"require_shadow": ctx.spec.shadow["min_records"],
                  "shadow": ctx.outputs["shadow"]["summary"]}
    out = _promote(ctx, "production", **kwargs)
    return out if "stop" in out else {**out, "promoted": True}
