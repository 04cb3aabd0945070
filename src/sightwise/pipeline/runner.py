"""`run_pipeline`: the stages in order, each skipped when its inputs hash as before, and
the summary a CI system acts on.

Exit codes (the Contract): 0 the candidate was promoted to production (or already was, by
an earlier run with the same inputs); 3 it was gated out (the failing gate named); 2 bad
input (the file, the data or a labels file); 1 any other error. A stage that raises leaves
no record, so the next run resumes there; one killed mid-stage is said to be resumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sightwise.core import atomic_write_json
from sightwise.errors import SightwiseError
from sightwise.pipeline import stages as st
from sightwise.pipeline.seams import Seams, default_seams
from sightwise.pipeline.spec import PipelineSpec
from sightwise.pipeline.state import StageState, WorkBusy, changed_keys, digest, fingerprint, work_lock

PROMOTED, ERROR, BAD_INPUT, GATED_OUT = 0, 1, 2, 3


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: Callable
    run: Callable
    valid: Callable = lambda ctx, out: True
    enabled: Callable = lambda ctx: True


STAGES = (
    Stage("data", st.data_inputs, st.data_run, st.data_valid),
    Stage("train", st.train_inputs, st.train_run, st.train_valid),
    Stage("evaluate", st.evaluate_inputs, st.evaluate_run),
    Stage("export", st.export_inputs, st.export_run, st.export_valid),
    Stage("gates", st.gates_inputs, st.gates_run),
    Stage("register", st.register_inputs, st.register_run, st.register_valid),
    Stage("staging", st.staging_inputs, st.staging_run),
    Stage("shadow", st.shadow_inputs, st.shadow_run, enabled=lambda ctx: ctx.spec.shadow is not None),
    Stage("production", st.production_inputs, st.production_run),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def check_stage(name: str | None) -> str | None:
    if name is not None and name not in STAGE_NAMES:
        raise SightwiseError(f"--from {name!r}: no such stage; stages: {', '.join(STAGE_NAMES)}")
    return name


def run_pipeline(spec: PipelineSpec, *, from_stage: str | None = None, dry_run: bool = False,
                 log=print, progress: bool = True, seams: Seams | None = None,
                 track: bool = True) -> dict:
    """Run (or with `dry_run`, plan) the pipeline; return the summary (also WORK/summary.json
    and, unless `track` is False or SIGHTWISE_TRACKING=0, an MLflow run)."""
    check_stage(from_stage)
    seams = seams or default_seams(spec.monitor_log, spec.monitor_window)
    ctx = st.Context(spec, spec.work, seams, log, progress)
    if dry_run:
        return _plan(ctx, from_stage)
    t0 = time.perf_counter()
    try:
        with work_lock(spec.work):
            summary = _execute(ctx, from_stage)
    except WorkBusy as exc:
        return _summary(ctx, [], [], error=(ERROR, str(exc)))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(spec.work / "summary.json", summary)
    if track and any(e["status"] != "skipped" for e in summary["stages"]):
        from sightwise.pipeline.report import track_summary  # a no-op rerun is not a run

        run_id = track_summary(summary, spec, log=log)
        if run_id:
            summary["mlflow_run_id"] = run_id
            atomic_write_json(spec.work / "summary.json", summary)
    return summary


def _execute(ctx: st.Context, from_stage: str | None) -> dict:
    state = StageState(ctx.work)
    resumed = state.interrupted()
    if resumed:
        ctx.log(f"resuming: the last run stopped during {', '.join(resumed)}")
    entries, gates, forcing = [], [], False
    for stage in STAGES:
        forcing = forcing or stage.name == from_stage
        if not stage.enabled(ctx):
            entries.append({"name": stage.name, "status": "skipped", "seconds": 0.0,
                            "reason": "not configured"})
            continue
        t0 = time.perf_counter()
        try:
            entry, out = _run_stage(ctx, state, stage, forcing)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the summary's reason
            code, msg = classify(exc)
            ctx.log(f"[{stage.name}] failed: {msg}")
            entries.append({"name": stage.name, "status": "failed",
                            "seconds": round(time.perf_counter() - t0, 2), "error": msg})
            return _summary(ctx, entries, gates, error=(code, msg), resumed=resumed)
        entries.append(entry)
        gates += out.get("gates", [])
        if out.get("stop"):
            entry.update(status="failed", reason=out["stop"]["reason"])
            return _summary(ctx, entries, gates, stop=out["stop"], resumed=resumed)
        if stage.name in ("staging", "production"):
            ctx._production = None  # the holder may have moved
    return _summary(ctx, entries, gates, resumed=resumed)


def _run_stage(ctx: st.Context, state: StageState, stage: Stage, forcing: bool):
    prev = state.load(stage.name)
    inputs = stage.inputs(ctx, prev["inputs"] if prev else None)
    key = digest(inputs)
    if not forcing and prev and prev["key"] == key and _still_valid(ctx, stage, prev["outputs"]):
        out = prev["outputs"]
        ctx.outputs[stage.name] = out
        ctx.log(f"[{stage.name}] skipped: inputs unchanged")
        return {"name": stage.name, "status": "skipped", "seconds": 0.0, "cached": True,
                "figures": out.get("figures", {})}, out
    why = ("forced (--from)" if forcing else "first run" if prev is None else
           "changed: " + ", ".join(changed_keys(prev["inputs"], inputs))
           if prev["key"] != key else "its outputs are gone")
    ctx.log(f"[{stage.name}] running ({why})")
    state.started(stage.name)
    t0 = time.perf_counter()
    try:
        out = stage.run(ctx)
    except BaseException:
        (state.folder / f"{stage.name}.started").unlink(missing_ok=True)  # failed, not killed
        raise
    seconds = time.perf_counter() - t0
    state.finish(stage.name, key, inputs, out, seconds)
    ctx.outputs[stage.name] = out
    return {"name": stage.name, "status": "ran", "seconds": round(seconds, 2), "reason": why,
            "figures": out.get("figures", {})}, out


def _still_valid(ctx, stage: Stage, out: dict) -> bool:
    try:
        return bool(stage.valid(ctx, out))
    except Exception:  # noqa: BLE001 - outputs that cannot be checked are made again
        return False


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line): bad input 2, anything else 1."""
    from sightwise.cli_errors import missing_extra

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, WorkBusy):
        return ERROR, first
    if isinstance(exc, ImportError) and missing_extra(exc):
        return BAD_INPUT, missing_extra(exc)
    if isinstance(exc, (SightwiseError, FileNotFoundError)):
        return BAD_INPUT, first
    if getattr(exc, "error_code", None) is not None:  # an MlflowException
        return ERROR, f"MLflow: {first}"
    return ERROR, f"{type(exc).__name__}: {first}"


def _summary(ctx: st.Context, entries: list, gates: list, *, stop: dict | None = None,
             error: tuple[int, str] | None = None, resumed: list | None = None) -> dict:
    prod = ctx.outputs.get("production") or {}
    promoted = bool(prod.get("promoted")) and stop is None and error is None
    version = (ctx.outputs.get("register") or {}).get("version")
    if error is not None:
        code, outcome, reason = error[0], "bad input" if error[0] == BAD_INPUT else "error", error[1]
    elif stop is not None:
        code, outcome, reason = GATED_OUT, "gated out", stop["reason"]
    elif promoted:
        code, outcome, reason = PROMOTED, "promoted", f"{ctx.spec.name} v{version} is in production"
    else:
        code, outcome, reason = ERROR, "error", "the pipeline ended without a verdict"
    summary = {"pipeline": str(ctx.spec.toml), "name": ctx.spec.name, "work": str(ctx.work),
               # The contract: each entry of "gates" has "passed": true|false. A gate that
               # could not be evaluated (no production yet, no monitored window) is listed
               # apart, with the reason, rather than as a third value of "passed".
               "stages": entries, "gates": [g for g in gates if g["status"] != "skipped"],
               "skipped_gates": [g for g in gates if g["status"] == "skipped"],
               "promoted": promoted, "version": version,
               "outcome": outcome, "reason": reason, "exit_code": code,
               "resumed_after": resumed or [],
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if promoted and all(e["status"] == "skipped" for e in entries):
        held = _holder_now(ctx)
        if held is not None and held != version:
            summary["note"] = (f"production now holds v{held}, moved after this candidate was "
                               "promoted; a rerun with unchanged inputs does not undo that")
    return summary


def _holder_now(ctx: st.Context) -> int | None:
    ctx._production = None
    try:
        held = ctx.production()
    except Exception:  # noqa: BLE001 - only a note
        return None
    return held[0] if held else None


def _plan(ctx: st.Context, from_stage: str | None) -> dict:
    """What a run would do, from the records alone: nothing is written or trained."""
    state = StageState(ctx.work)
    entries, stale, forcing = [], False, False
    for stage in STAGES:
        forcing = forcing or stage.name == from_stage
        if not stage.enabled(ctx):
            entries.append({"name": stage.name, "status": "skipped", "reason": "not configured"})
            continue
        if stale or forcing:
            entries.append({"name": stage.name, "status": "would-run",
                            "reason": "forced (--from)" if forcing else "an earlier stage runs"})
            stale = True
            continue
        prev = state.load(stage.name)
        inputs = stage.inputs(ctx, prev["inputs"] if prev else None)
        if prev and prev["key"] == digest(inputs) and _still_valid(ctx, stage, prev["outputs"]):
            ctx.outputs[stage.name] = prev["outputs"]
            entry = {"name": stage.name, "status": "would-skip", "reason": "inputs unchanged"}
            entries.append(entry)
            if prev["outputs"].get("stop"):
                entry["reason"] += "; gated out: " + prev["outputs"]["stop"]["reason"]
                break
            continue
        why = "first run" if prev is None else (
            "changed: " + ", ".join(changed_keys(prev["inputs"], inputs)))
        entries.append({"name": stage.name, "status": "would-run", "reason": why})
        stale = True
    return {"pipeline": str(ctx.spec.toml), "name": ctx.spec.name, "dry_run": True,
            "stages": entries, "gates": [], "skipped_gates": [], "promoted": False,
            "version": (ctx.outputs.get("register") or {}).get("version"),
            "outcome": "dry run", "exit_code": PROMOTED}


def watch(spec: PipelineSpec, run: Callable[[], dict], *, interval: float = 60.0, log=print,
          stop: threading.Event | None = None, max_runs: int | None = None) -> int:
    """Run once, then again whenever the dataset or the labels file changes (checked every
    `interval` seconds by their fingerprints), until `stop` is set. Returns the run count."""
    stop = stop or threading.Event()
    last, runs = None, 0
    while not stop.is_set():
        now = (fingerprint(spec.data, exclude=spec.work),
               fingerprint(spec.labels) if spec.labels is not None and spec.labels.exists() else None)
        if now != last:
            last = now  # taken before the run: a change during it triggers the next one
            if runs:
                log("watch: the data or the labels changed; running the pipeline")
            summary = run()
            runs += 1
            log(f"watch: {summary.get('outcome')} (exit {summary.get('exit_code')}); "
                f"checking every {interval:g} s")
            if max_runs is not None and runs >= max_runs:
                break
        stop.wait(interval)
    return runs


def summary_path(spec: PipelineSpec) -> Path:
    return spec.work / "summary.json"
