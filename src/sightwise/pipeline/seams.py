"""Seams for what other packages measure: the monitor's label-free accuracy of the most
recent window, and the label audit's share of suspected label errors.

Each is a plain callable in `Seams`, so a test (or another deployment) can hand in its own.
`default_seams` gives the real ones: `sightwise.monitor`'s ``monitor_summary(log_dir,
bundle)`` (per-window ``estimated_accuracy``) and `sightwise.label.audit`'s ``run_audit``.
When one is not configured (no [monitor] log) or cannot run (the audit needs the train
extra), its gate is reported *skipped* with the reason (neither passed nor failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sightwise.pipeline.gates import gate, skipped

# bundle -> {"estimated_accuracy", "window", "n"} of its latest monitored window, or None
WindowProvider = Callable[[object], "dict | None"]
# (manifest CSV, dataset path, progress) -> {"share", "suspects", "n", "source"}
AuditProvider = Callable[[Path, Path, bool], dict]


@dataclass(frozen=True)
class Seams:
    window: WindowProvider | None = None
    window_reason: str = "no monitored window ([monitor] log is not set)"
    audit: AuditProvider | None = None
    audit_reason: str = "the label audit (sightwise.label.audit) is not installed"


def monitor_window(log_dir: Path | None, window: int = 100
                   ) -> tuple[WindowProvider | None, str]:
    """The latest window's label-free accuracy in the prediction log at `log_dir`, in
    windows of `window` predictions (use the server's `--window`)."""
    if log_dir is None:
        return None, "no monitored window ([monitor] log is not set)"
    from sightwise.monitor.report import monitor_summary
    from sightwise.monitor.windows import MonitorConfig

    config = MonitorConfig(window=window, min_n=min(20, window))

    def latest_window(bundle) -> dict | None:
        summary = monitor_summary(log_dir, bundle, config=config)
        windows = [w for w in summary.get("windows", []) if w.get("estimated_accuracy") is not None]
        if not windows:
            return None
        w = windows[-1]
        return {"estimated_accuracy": float(w["estimated_accuracy"]), "window": w.get("index"),
                "n": w.get("n")}

    return latest_window, ""


def label_audit() -> tuple[AuditProvider | None, str]:
    try:
        from sightwise.label.audit import run_audit
    except ImportError:
        return None, "the label audit (sightwise.label.audit) is not installed"

    def audit(manifest: Path, dataset: Path, progress: bool) -> dict:
        # The merged manifest (the dataset plus the labels file's answers) names files
        # outside its own folder.
        res = run_audit(str(manifest), allow_outside=True, progress=progress,
                        log=lambda _m: None)
        s = res["summary"]
        return {"share": float(s["suspect_share"]), "suspects": int(s["suspects"]),
                "n": int(s["images"]), "source": str(manifest)}

    return audit, ""


def default_seams(monitor_log: Path | None, monitor_window_size: int = 100) -> Seams:
    window, why_w = monitor_window(monitor_log, monitor_window_size)
    audit, why_a = label_audit()
    return Seams(window=window, window_reason=why_w, audit=audit, audit_reason=why_a)


def label_free_gate(seams: Seams, candidate, production, max_drop: float, *,
                    stage: str) -> dict:
    """The candidate's label-free accuracy estimate on its latest monitored window must not
    be more than `max_drop` below production's on its latest window."""
    name = "label_free_accuracy"
    if seams.window is None:
        return skipped(name, None, seams.window_reason, stage=stage)
    if production is None:
        return skipped(name, None, "no production version to compare with", stage=stage)
    try:
        prod, cand = seams.window(production), seams.window(candidate)
    except Exception as exc:  # noqa: BLE001 - a monitor that cannot answer skips its gate
        return skipped(name, None, f"no monitored window (monitor: {type(exc).__name__}: "
                       f"{str(exc)[:200]})", stage=stage)
    if prod is None:
        return skipped(name, None, "no monitored window of production yet", stage=stage)
    if cand is None:
        return skipped(name, None, "no monitored window of the candidate yet (its predictions "
                       "reach the log through shadow traffic)", stage=stage)
    threshold = prod["estimated_accuracy"] - max_drop
    return gate(name, cand["estimated_accuracy"], threshold, at_most=False, stage=stage,
                detail=(f"latest windows: candidate {cand['estimated_accuracy']:.4f} "
                        f"(n={cand['n']}), production {prod['estimated_accuracy']:.4f} "
                        f"(n={prod['n']}), allowed drop {max_drop:g}"))


def audit_gate(seams: Seams, manifest: Path, dataset: Path, limit: float, *, progress: bool,
               stage: str) -> dict:
    name = "max_label_error_share"
    if seams.audit is None:
        return skipped(name, limit, seams.audit_reason, stage=stage)
    res = seams.audit(manifest, dataset, progress)
    return gate(name, res["share"], limit, at_most=True, stage=stage,
                detail=f"{res['suspects']} of {res['n']} labels suspected (confident learning)")
