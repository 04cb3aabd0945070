"""`sightwise info BUNDLE`: what a bundle is, in one screen, from its typed metadata."""

from __future__ import annotations

from sightwise.bundle import FP32, INT8, Bundle
from sightwise.errors import BundleError


def bundle_summary(bundle: Bundle) -> dict:
    """A JSON-ready description; `runnable` says which graphs `Bundle.graph` allows (and
    why not, when it refuses)."""
    meta = bundle.meta
    test = meta.metrics.get("test", {})
    return {
        "path": str(bundle.path), "task": meta.task, "classes": list(meta.classes),
        "model": dict(meta.model), "input": meta.preprocessing.to_dict(),
        "temperature": meta.temperature,
        "test": {k: test[k] for k in ("n", "accuracy", "macro_f1", "auroc", "ece") if k in test},
        "runnable": {name: _runnable(bundle, name == INT8) for name in (FP32, INT8)},
        "files": {name: entry.bytes for name, entry in meta.files.items()},
        "created": meta.created, "digest": meta.digest,
    }


def _runnable(bundle: Bundle, int8: bool) -> str:
    try:
        bundle.graph(int8=int8)
    except BundleError as exc:
        return f"no: {str(exc).split(': ', 1)[-1]}"
    return "yes"


def format_summary(s: dict) -> str:
    model = s["model"]
    lines = [
        f"{s['path']}",
        f"  task:        {s['task']}, {len(s['classes'])} classes: {_classes(s['classes'])}",
        f"  model:       {model.get('name', '?')} ({model.get('strategy', '?')}"
        + (f", {model['members']} members" if model.get("members") else "") + ")",
        f"  input:       {s['input']['size']} px, {s['input']['resize']}, "
        f"{s['input']['interpolation']}",
        f"  calibration: temperature {s['temperature']:g}",
    ]
    if s["test"]:
        lines.append("  test:        " + ", ".join(f"{k} {_num(v)}" for k, v in s["test"].items()))
    for name, state in s["runnable"].items():
        lines.append(f"  {name + ':':16s} {state}")
    size = sum(s["files"].values())
    lines.append(f"  files:       {len(s['files'])} ({size / 1e6:.1f} MB): {', '.join(sorted(s['files']))}")
    lines.append(f"  created:     {s['created'] or '?'}   digest {s['digest'][:12]}")
    return "\n".join(lines)


def _classes(names: list[str], shown: int = 8) -> str:
    head = ", ".join(names[:shown])
    return head + (f", ... (+{len(names) - shown})" if len(names) > shown else "")


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
