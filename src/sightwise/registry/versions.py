"""Register bundles as MLflow model versions and describe them.

A registered version is an immutable copy of the bundle in ``bundles/NAME/<version>/``:
staged in a hidden ``.incoming-*`` folder, verified with `load_bundle`, renamed into place,
and only then created in MLflow (the source of truth for versions and aliases). A writer
killed at any moment leaves either no new version or a complete one; a complete folder that
MLflow never heard of is replaced by the next registration.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from sightwise.bundle import Bundle, find_bundle_dir, load_bundle
from sightwise.core import sha256_path
from sightwise.errors import BundleError
from sightwise.registry.store import (
    RegistryError,
    mlflow_client,
    mlflow_error_code,
    model_dir,
    store_lock,
    validate_name,
    version_dir,
)
from sightwise.registry.tracking import recorded_runs

KEY_METRICS = ("n", "accuracy", "macro_f1", "auroc", "ece")


def register_bundle(source: str | Path, name: str, *, log=None) -> dict:
    """Copy a verified bundle (or RUN/bundle) into the store as NAME's next version."""
    validate_name(name)
    bundle = load_bundle(find_bundle_dir(source))  # refuses pickles, escapes, tampering
    runs = recorded_runs(bundle.path, bundle.path.parent)
    client = mlflow_client()
    with store_lock():
        _ensure_model(client, name)
        folder = model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        _clean_hidden(folder)
        staged = _stage_copy(bundle, folder)
        version = _create_version(client, name, staged, bundle, runs, str(Path(source).absolute()))
    if log:
        log(f"registered {name} version {version} ({version_dir(name, version)})")
    return version_record(client, name, version)


def _ensure_model(client, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception as exc:
        if mlflow_error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            name, tags={"sightwise": "bundle"},
            description="Sightwise bundles; files in $SIGHTWISE_HOME/bundles/" + name)


def _clean_hidden(folder: Path) -> None:
    """Remove staging and orphan folders left by killed writers (we hold the lock)."""
    for entry in folder.iterdir():
        if entry.name.startswith((".incoming-", ".orphan-")):
            shutil.rmtree(entry, ignore_errors=True)


def _stage_copy(bundle: Bundle, folder: Path) -> Path:
    """Copy bundle.json and the files it lists (nothing else) into a hidden folder, fsync,
    make the files read-only and verify the copy."""
    staged = Path(tempfile.mkdtemp(dir=folder, prefix=".incoming-"))
    try:
        for name in ["bundle.json", *bundle.meta.files]:
            dst = staged / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.path / name, dst)
            with open(dst, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(dst, 0o444)
        os.chmod(staged, 0o755)
        copy = load_bundle(staged)
        if sha256_path(staged / "bundle.json") != sha256_path(bundle.path / "bundle.json"):
            raise BundleError(f"{bundle.path} changed while it was being registered; try again")
        if dict(copy.meta.files) != dict(bundle.meta.files):
            raise BundleError(f"{bundle.path} changed while it was being registered; try again")
        _fsync_dir(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _create_version(client, name: str, staged: Path, bundle: Bundle, runs: dict,
                    source: str) -> int:
    """Rename the staged folder to the next version's number, then create that version.

    MLflow numbers a new version after the highest it ever made (deleted ones included),
    which a client cannot see; if the guess was low the wrong version is deleted again and
    the folder follows the number MLflow gave.
    """
    expected = next_version(client, name)
    tags = version_tags(bundle, runs, source)
    for _ in range(5):
        final = _place(staged, staged.parent, expected)
        mv = client.create_model_version(name, source=str(final), run_id=runs.get("train"),
                                         tags=tags, description=_describe(bundle))
        if int(mv.version) == expected:
            return expected
        client.delete_model_version(name, mv.version)
        staged, expected = final, int(mv.version) + 1
    raise RegistryError(f"could not agree on a version number with MLflow for {name}")


def next_version(client, name: str) -> int:
    return max((int(v.version) for v in search_versions(client, name)), default=0) + 1


def _place(src: Path, folder: Path, version: int) -> Path:
    final = folder / str(version)
    if final.exists() or final.is_symlink():
        # MLflow has no such version (it is past the highest one), so this is a complete
        # copy whose registration was interrupted: move it aside, then delete it.
        aside = folder / f".orphan-{version}-{uuid.uuid4().hex[:8]}"
        os.replace(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(src, final)  # a directory rename is atomic: readers see nothing or all
    _fsync_dir(folder)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename durability is the OS's there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def version_tags(bundle: Bundle, runs: dict, source: str) -> dict:
    """Summary tags for the MLflow UI; Sightwise itself reads the immutable bundle.json."""
    meta = bundle.meta.raw
    export = meta.get("export") or {}
    tags = {
        "sightwise.metrics": json.dumps(key_metrics(meta)),
        "sightwise.parity": parity_state(meta),
        "sightwise.data_sha256": str(meta.get("data", {}).get("manifest_sha256", "")),
        "sightwise.bundle_sha256": sha256_path(bundle.path / "bundle.json"),
        "sightwise.registered_from": source,
        "sightwise.git_commit": str(meta.get("git_commit") or ""),
        "sightwise.parent": json.dumps(parent_of(meta)),
        "sightwise.int8_passed": str(export.get("int8_passed")),
    }
    for kind, run_id in runs.items():
        tags[f"sightwise.{kind}_run_id"] = str(run_id)
    return tags


def _describe(bundle: Bundle) -> str:
    m = bundle.meta.model
    return (f"{bundle.task}: {m.get('name', '?')} ({m.get('strategy', '?')}), "
            f"{len(bundle.classes)} classes")


def key_metrics(meta: dict) -> dict:
    test = meta.get("metrics", {}).get("test", {})
    return {k: test[k] for k in KEY_METRICS if isinstance(test.get(k), (int, float))}


def parity_state(meta: dict) -> str:
    """passed | failed | forced (failed, kept by export --force) | missing (never exported)."""
    export = meta.get("export")
    if not export:
        return "missing"
    if export.get("parity_passed"):
        return "passed"
    return "forced" if export.get("forced") else "failed"


def parent_of(meta: dict):
    """The version this bundle was retrained from, when bundle.json records one as
    "parent": "NAME/3" or {"name": ..., "version": ...}."""
    parent = meta.get("parent") or meta.get("lineage", {}).get("parent")
    if isinstance(parent, dict) and "version" in parent:
        return {"name": parent.get("name"), "version": int(parent["version"])}
    if isinstance(parent, str) and "/" in parent and parent.rsplit("/", 1)[1].isdigit():
        left, right = parent.rsplit("/", 1)
        return {"name": left, "version": int(right)}
    return None


def search_versions(client, name: str) -> list:
    return list(client.search_model_versions(f"name='{validate_name(name)}'", max_results=10000))


def read_meta(name: str, version: int) -> dict | None:
    """bundle.json of a stored version (unverified; `load_bundle` verifies before use)."""
    try:
        return json.loads((version_dir(name, version) / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def aliases_of(client, name: str) -> dict[str, int]:
    """{alias: version}; search results do not carry aliases, the registered model does."""
    return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}


def version_record(client, name: str, version: int, *, mv=None, aliases: dict | None = None) -> dict:
    """The `models list --json` record of one version."""
    mv = mv or client.get_model_version(name, str(version))
    aliases = aliases_of(client, name) if aliases is None else aliases
    meta = read_meta(name, version)
    rec = {"name": name, "version": int(version),
           "aliases": sorted(a for a, v in aliases.items() if v == int(version)),
           "metrics": key_metrics(meta) if meta else json.loads(
               mv.tags.get("sightwise.metrics", "{}")),
           "parity_passed": parity_state(meta or {}) == "passed",
           "parity": parity_state(meta) if meta else mv.tags.get("sightwise.parity", "missing"),
           "created": _iso(mv.creation_timestamp),
           "parent": parent_of(meta or {}),
           "data_sha256": (meta or {}).get("data", {}).get("manifest_sha256"),
           "run_id": mv.run_id or None}
    if meta is None:
        rec["error"] = f"bundle folder {version_dir(name, version)} is missing or unreadable"
    return rec


def list_versions(name: str | None = None) -> list[dict]:
    """Records of every version of NAME (or of every registered model), oldest first."""
    client = mlflow_client()
    names = [validate_name(name)] if name else sorted(
        m.name for m in client.search_registered_models(max_results=1000))
    out = []
    for n in names:
        try:
            aliases = aliases_of(client, n)
        except Exception as exc:
            if mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"no registered model named {n!r}") from None
            raise
        for mv in sorted(search_versions(client, n), key=lambda v: int(v.version)):
            out.append(version_record(client, n, int(mv.version), mv=mv, aliases=aliases))
    return out


def lineage(name: str, version: int) -> dict:
    """Where a version came from: data, config, code, packages, parity, parent, runs."""
    meta = read_meta(name, version) or {}
    export = meta.get("export") or {}
    return {
        "data": meta.get("data", {}),
        "config": meta.get("config", {}),
        "git_commit": meta.get("git_commit"),
        "versions": meta.get("versions", {}),
        "model": meta.get("model", {}),
        "classes": meta.get("classes", []),
        "parity": {k: export.get(k) for k in ("parity_passed", "forced", "fp32_passed",
                                              "int8_passed", "failed_checks", "parity")},
        "parent": parent_of(meta),
        "bundle_dir": str(version_dir(name, version)),
        "files": sorted(meta.get("files", {})),
        "created": meta.get("created"),
    }


def _iso(ms) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))
