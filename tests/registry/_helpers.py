"""Builders shared by tests/registry (loaded by path from conftest.py and _killer.py).

`fake_bundle` writes a small but real bundle folder (bundle.json with sha256 of each file,
a manifest.csv with a test split, an export entry) whose metrics and parity a test
chooses, so gate decisions are exact without training a model.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np

from sightwise.bundle import load_bundle, write_bundle_meta

MANIFEST = "path,label,split,sha256\n" + "".join(
    f"img{i}.png,{'ab'[i % 2]},{('train', 'val', 'test')[i % 3]},{i:064x}\n" for i in range(12))


def fake_bundle(path: Path, *, macro_f1: float = 0.9, parity: bool | None = True,
                data_sha: str = "a" * 64, manifest: str = MANIFEST, payload_bytes: int = 4096,
                seed: int = 0, parent=None) -> Path:
    """parity=None: never exported (no "export" entry)."""
    path = Path(path)
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (path / "model.onnx").write_bytes(rng.integers(0, 256, payload_bytes, dtype=np.uint8).tobytes())
    (path / "manifest.csv").write_text(manifest)
    meta = {"task": "classification", "classes": ["a", "b"],
            "model": {"name": "fake", "strategy": "linear-probe"},
            "preprocessing": {"size": 32, "resize": "stretch", "interpolation": "bilinear",
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "metrics": {"test": {"n": 4, "accuracy": macro_f1, "macro_f1": macro_f1,
                                 "ece": 0.05}},
            "data": {"manifest_sha256": data_sha, "root": "/data", "layout": "folder"},
            "config": {"seed": seed, "strategy": "linear-probe"},
            "versions": {"sightwise": "0.1.0"}, "git_commit": "0123abc"}
    if parity is not None:
        meta["export"] = {"parity_passed": parity, "forced": False, "fp32_passed": parity,
                          "int8_passed": None,
                          "failed_checks": [] if parity else ["fp32 top-1 agreement 0.80 < 0.99"]}
    if parent is not None:
        meta["parent"] = parent
    write_bundle_meta(path, meta)
    return path


def integrity_ok(db: Path) -> bool:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


def check_store(home: Path, name: str, verified: set[str], alias: str = "production") -> int:
    """The invariants a killed writer must not break; returns the alias holder."""
    from sightwise.registry.promote import settled_history
    from sightwise.registry.resolve import current_version, resolve_bundle
    from sightwise.registry.store import mlflow_client
    from sightwise.registry.versions import search_versions

    assert integrity_ok(home / "mlflow.db")
    folder = home / "bundles" / name
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue  # hidden staging folders: never resolved, removed by the next writer
        assert entry.name.isdigit() and entry.is_dir() and not entry.is_symlink(), entry
        if entry.name not in verified:  # immutable: verifying once is enough
            load_bundle(entry)
            verified.add(entry.name)
    client = mlflow_client()
    for mv in search_versions(client, name):
        assert (folder / str(mv.version)).is_dir(), f"MLflow has v{mv.version} without its folder"
    holder = current_version(name, alias)
    assert holder is not None
    assert resolve_bundle(f"{name}@{alias}") == folder / str(holder[0])
    done = [e for e in settled_history(client, name) if e["state"] == "done" and e["alias"] == alias]
    assert done and done[-1]["to"] == holder[0], (done[-1:], holder)
    for a, b in zip(done, done[1:], strict=False):
        assert b["from"] == a["to"], (a, b)  # moves chain: none lost, none doubled
    return holder[0]


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "MLFLOW_REGISTRY_URI")}
    env.update(SIGHTWISE_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true")
    return env
