"""The pipeline summary as text (stdout), Markdown (a CI job summary) and an MLflow run."""

from __future__ import annotations

import json

from sightwise.pipeline.spec import PipelineSpec

_OP = {True: ">=", False: "<="}


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _figures(fig: dict | None) -> str:
    parts = []
    for k, v in (fig or {}).items():
        if v is None:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a} {_num(b)}" for a, b in v.items() if b not in (None, 0, ""))
            if not v:
                continue
            v = f"({v})"
        parts.append(f"{k} {_num(v)}")
    return ", ".join(parts)


def _at_least(g: dict) -> bool:
    from sightwise.pipeline.gates import _AT_LEAST

    return g["name"].startswith("min") or g["name"].split("[")[0] in _AT_LEAST


def _gate_line(g: dict) -> tuple[str, str, str, str]:
    value = "-" if g["value"] is None else _num(g["value"])
    limit = "-" if g["threshold"] is None else f"{_OP[_at_least(g)]} {_num(g['threshold'])}"
    return g["status"].upper() if g["status"] == "failed" else g["status"], g["name"], \
        f"{value} {limit}".strip(), g.get("detail") or ""


def headline(summary: dict) -> str:
    code = summary.get("exit_code")
    if summary.get("dry_run"):
        return "DRY RUN: nothing was run or written"
    if summary.get("promoted"):
        return f"PROMOTED {summary['name']} v{summary['version']} to production (exit {code})"
    word = {"gated out": "GATED OUT", "bad input": "BAD INPUT"}.get(summary.get("outcome"), "ERROR")
    return f"{word}: {summary.get('reason')} (exit {code})"


def format_text(summary: dict) -> str:
    lines = [f"pipeline {summary.get('name')} ({summary.get('pipeline')})"]
    for e in summary.get("stages", []):
        secs = f"{e['seconds']:.1f} s" if e.get("seconds") else ""
        extra = e.get("error") or (e.get("reason") if e["status"] != "ran" else "") or ""
        lines.append(f"  {e['name']:<11}{e['status']:<11}{secs:>8}  "
                     f"{_figures(e.get('figures'))}{'  ' + extra if extra else ''}".rstrip())
    if all_gates(summary):
        lines.append("gates")
        for status, name, value, detail in map(_gate_line, all_gates(summary)):
            lines.append(f"  {status:<8}{name:<28}{value:<22}{detail}".rstrip())
    if summary.get("note"):
        lines.append(f"note: {summary['note']}")
    lines.append(headline(summary))
    return "\n".join(lines)


def all_gates(summary: dict) -> list[dict]:
    """Every gate of a summary: the decided ones, then the skipped ones (with why)."""
    return [*summary.get("gates", []), *summary.get("skipped_gates", [])]


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_markdown(summary: dict) -> str:
    out = [f"### Model pipeline: {_md(summary.get('name'))}", "", f"**{_md(headline(summary))}**",
           "", "| stage | status | time | key figures |", "| --- | --- | --- | --- |"]
    for e in summary.get("stages", []):
        secs = f"{e['seconds']:.1f} s" if e.get("seconds") else ""
        note = e.get("error") or (e.get("reason") if e["status"] != "ran" else "") or ""
        out.append(f"| {e['name']} | {e['status']} | {secs} | "
                   f"{_md(_figures(e.get('figures')))} {_md(note)} |")
    if all_gates(summary):
        out += ["", "| gate | result | value | detail |", "| --- | --- | --- | --- |"]
        for status, name, value, detail in map(_gate_line, all_gates(summary)):
            out.append(f"| {_md(name)} | {status} | {_md(value)} | {_md(detail)} |")
    if summary.get("note"):
        out += ["", f"_{_md(summary['note'])}_"]
    return "\n".join(out) + "\n"


def track_summary(summary: dict, spec: PipelineSpec, *, log=print) -> str | None:
    """An MLflow run "pipeline-<work folder>": per-stage seconds and figures, each gate's
    value, threshold and verdict as metrics, the resolved spec as params, summary.json as
    an artifact. Never fails the pipeline (tracking off or broken: None)."""
    from sightwise.registry.tracking import log_run, tracking_enabled

    if not tracking_enabled():
        return None
    metrics = {"promoted": summary["promoted"], "exit_code": summary["exit_code"],
               "version": summary["version"] or 0,
               "stages": [{"name": e["name"], "seconds": e.get("seconds", 0.0),
                           "ran": e["status"] == "ran", "figures": e.get("figures") or {}}
                          for e in summary["stages"]],
               "gates": [{"name": g["name"], "value": g["value"], "threshold": g["threshold"],
                          "passed": g["passed"]} for g in summary["gates"]
                         if isinstance(g["threshold"], (int, float, type(None)))]}
    run_id = log_run("pipeline", spec.work, metrics, spec.describe(), None, log=log)
    if run_id is None:
        return None
    try:
        from sightwise.registry.store import mlflow_client

        mlflow_client().log_artifact(run_id, str(spec.work / "summary.json"), "pipeline")
    except Exception as exc:  # noqa: BLE001 - the run is tracked; only the file is missing
        log(f"warning: could not attach summary.json to MLflow run {run_id}: {exc}")
    return run_id


def load_summary(path) -> dict:
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    if not isinstance(summary, dict) or "stages" not in summary or "gates" not in summary:
        raise ValueError(f"{path}: not a pipeline summary (needs stages and gates)")
    return summary
