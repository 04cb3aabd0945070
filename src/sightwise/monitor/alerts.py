"""What an alert does: queue the drifted windows' images for labelling, and tell a webhook.

The labelling queue is a folder that annotation and retraining tools consume as a pool::

    QUEUE/<alert id>/            one folder per alert, renamed into place when complete
        alert.json               the event (model, version, reference id, windows, p-values,
                                 estimated accuracy, created)
        items.jsonl              one image per line, least confident first: sha256, time,
                                 window, predicted, confidence, outlier_score, source (the
                                 file's path when `predict --log` logged it), image (path
                                 inside this folder, or null when images were not kept)
        images/<sha256>.<ext>    the kept images (hard links into the log where possible)

Folders whose name starts with '.' are still being written; a consumer takes the others
and may delete or move them when done. Alert ids sort by time.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np

from sightwise.core import atomic_write_json, atomic_write_text

log = logging.getLogger("sightwise.monitor")


def alert_id(window: dict, model: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(window["end"]))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model))[:60]
    return f"{stamp}-{safe}-w{window['index']}"


def queue_items(records: list[dict], windows_of: dict[str, int], classes: list[str],
                ref=None) -> list[dict]:
    """One item per distinct image (sha256), least confident first."""
    items, seen = [], set()
    for r in records:
        sha = r.get("sha256")
        if not sha or sha in seen:
            continue
        seen.add(sha)
        p = np.asarray(r["probs"], np.float64)
        c = int(p.argmax())
        score = None
        if ref is not None and r.get("d2") is not None:
            score = round(r["d2"] / ref.stats["outlier_threshold"], 4)  # > 1: an outlier
        items.append({"sha256": sha, "time": r["t"], "window": windows_of.get(sha),
                      "predicted": classes[c] if c < len(classes) else c,
                      "confidence": round(float(p[c]), 6), "outlier_score": score,
                      "source": r.get("source"), "log_image": r.get("img")})
    items.sort(key=lambda it: it["confidence"])
    return items


def write_queue_entry(queue_dir: str | Path, event: dict, items: list[dict],
                      log_dir: str | Path | None = None) -> Path | None:
    """Write one alert folder atomically (build hidden, rename); None if it already exists.
    Kept images are hard-linked from the log (copied across file systems)."""
    queue = Path(queue_dir)
    final = queue / event["id"]
    if final.exists():
        return None
    queue.mkdir(parents=True, exist_ok=True)
    tmp = queue / f".{event['id']}.{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        lines = []
        for it in items:
            it = dict(it)
            rel = it.pop("log_image", None)
            it["image"] = _link_image(Path(log_dir), rel, tmp) if log_dir and rel else None
            lines.append(json.dumps(it))
        atomic_write_text(tmp / "items.jsonl", "".join(line + "\n" for line in lines))
        atomic_write_json(tmp / "alert.json", {**event, "n_items": len(items)})
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _link_image(log_dir: Path, rel: str, entry: Path) -> str | None:
    src = log_dir / rel
    dst = entry / "images" / Path(rel).name
    dst.parent.mkdir(exist_ok=True)
    try:
        os.link(src, dst)
    except FileNotFoundError:
        return None  # removed by retention since it was logged
    except OSError:
        try:
            shutil.copyfile(src, dst)
        except OSError:
            return None
    return dst.relative_to(entry).as_posix()


def post_webhook(url: str, event: dict, timeout: float = 5.0) -> bool:
    """POST the event as JSON; True on a 2xx answer. Never raises, never waits past timeout."""
    if not url.lower().startswith(("http://", "https://")):
        log.warning("alert webhook %r is not an http(s) URL; not called", url)
        return False
    data = json.dumps(event).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "sightwise-monitor"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user's URL
            return 200 <= resp.status < 300
    except Exception as exc:  # noqa: BLE001 - an unreachable webhook is not our failure
        log.warning("alert webhook %s failed: %s", url, exc)
        return False


def alert_event(window: dict, windows: list[dict], *, model: str, version, ref_id: str | None,
                classes: list[str]) -> dict:
    """The JSON an alert sends: the alerting window and the drifted ones it counted."""
    keep = ("index", "start", "end", "n", "p_value", "p_values", "estimated_accuracy",
            "outlier_share", "mmd2")
    return {"event": "sightwise.drift_alert", "id": alert_id(window, model), "model": model,
            "version": version, "reference": ref_id, "classes": classes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "window": {k: window.get(k) for k in keep},
            "drifted_windows": [{k: w.get(k) for k in keep} for w in windows]}
