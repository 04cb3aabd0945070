"""Gated promotion, rollback and the history of alias moves.

An alias (``production``) is an MLflow registered-model alias. Promotion is refused, unless
forced, for a version whose export parity gate failed or is missing, or whose test macro-F1
is more than `tolerance` below the current holder's on the same test data.

Every move is written to ``$SIGHTWISE_HOME/history/NAME.jsonl`` as "pending" before the
alias moves and marked "done" after; a writer killed in between leaves a pending entry that
the next writer settles by looking at where the alias actually points. All of it happens
under the store lock, so concurrent promotions are serialised.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import uuid
from pathlib import Path

from sightwise.bundle import Bundle, atomic_write_bytes, load_bundle
from sightwise.registry.resolve import open_version
from sightwise.registry.store import (
    PromotionRefused,
    RegistryError,
    current_user,
    mlflow_client,
    mlflow_error_code,
    sightwise_home,
    store_lock,
    validate_alias,
    validate_name,
    version_dir,
)
from sightwise.registry.versions import aliases_of, parity_state

DEFAULT_ALIAS = "production"


# ---------------------------------------------------------------- history

def history_path(name: str) -> Path:
    return sightwise_home() / "history" / f"{validate_name(name)}.jsonl"


def read_history(name: str) -> list[dict]:
    path = history_path(name)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # never written by us (writes are atomic); skip rather than fail
    return entries


def _write_history(name: str, entries: list[dict]) -> None:
    path = history_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    atomic_write_bytes(path, data.encode("utf-8"))


def settled_history(client, name: str, entries: list[dict] | None = None) -> list[dict]:
    """Entries with "pending" ones resolved against MLflow: done when the alias points
    where the entry says, else interrupted (or still pending, if a writer holds the lock)."""
    entries = read_history(name) if entries is None else entries
    pending = [e for e in entries if e.get("state") == "pending"]
    if not pending:
        return entries
    holders = aliases_of(client, name)
    out = []
    for e in entries:
        if e.get("state") == "pending" and holders.get(e["alias"]) == e["to"]:
            e = {**e, "state": "done"}
        out.append(e)
    return out


def _settle(client, name: str) -> list[dict]:
    """Under the lock: no other writer is mid-move, so a pending entry whose alias does not
    point at its target was interrupted before the move."""
    entries = settled_history(client, name)
    fixed = [{**e, "state": "interrupted"} if e.get("state") == "pending" else e for e in entries]
    if fixed != read_history(name):
        _write_history(name, fixed)
    return fixed


def _move_alias(client, name: str, entry: dict, entries: list[dict]) -> dict:
    entries = [*entries, {**entry, "state": "pending"}]
    _write_history(name, entries)
    client.set_registered_model_alias(name, entry["alias"], str(entry["to"]))
    entries[-1] = {**entry, "state": "done"}
    _write_history(name, entries)
    return entries[-1]


def _entry(action: str, alias: str, src: int | None, dst: int, *, forced: bool,
           overridden: list[str], reason: str | None, who: str | None) -> dict:
    return {"id": uuid.uuid4().hex, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "who": who or current_user(), "action": action, "alias": alias,
            "from": src, "to": dst, "forced": forced, "overridden": overridden,
            "reason": reason or ""}


# ---------------------------------------------------------------- the gate

def test_fingerprint(bundle: Bundle) -> str | None:
    """sha256 of the test split's (file sha256, label) pairs from the bundle's manifest:
    the same test images even when the data moved or the seed re-drew train/val."""
    path = bundle.path / "manifest.csv"
    if not bundle.has("manifest.csv") or not path.is_file():
        return None
    rows = sorted(f"{r.get('sha256')},{r.get('label')}" for r in
                  csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
                  if r.get("split") == "test")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest() if rows else None


def same_test_data(a: Bundle, b: Bundle) -> bool:
    sa = a.meta.data.get("manifest_sha256")
    sb = b.meta.data.get("manifest_sha256")
    if sa and sa == sb:
        return True
    ta, tb = test_fingerprint(a), test_fingerprint(b)
    return ta is not None and ta == tb


def _macro_f1(bundle: Bundle) -> float | None:
    value = bundle.meta.metrics.get("test", {}).get("macro_f1")
    return float(value) if isinstance(value, (int, float)) else None


def _parity_message(cand: Bundle, cand_v: int, state: str) -> str:
    if state == "passed":
        return f"v{cand_v} passed its export parity gate"
    if state == "missing":
        return (f"v{cand_v} has no export parity record (run `sightwise export` on the bundle "
                "before registering it)")
    failed = list(cand.meta.export.failed_checks) if cand.meta.export else []
    return (f"v{cand_v} failed its export parity gate"
            + (" (kept with export --force)" if state == "forced" else "")
            + (": " + "; ".join(failed) if failed else ""))


def gate_checks(cand: Bundle, cand_v: int, holder: Bundle | None, holder_v: int | None,
                alias: str, tolerance: float) -> list[dict]:
    """[{"check", "passed", "message"}]: parity, then test data and macro-F1 vs the holder."""
    state = parity_state(cand.meta.raw)
    checks = [{"check": "parity", "passed": state == "passed",
               "message": _parity_message(cand, cand_v, state)}]
    if holder is None:
        return checks
    if not same_test_data(cand, holder):
        sa = str(cand.meta.data.get("manifest_sha256", "?"))[:12]
        sb = str(holder.meta.data.get("manifest_sha256", "?"))[:12]
        checks.append({"check": "test-data", "passed": False, "message": (
            f"test data differ: v{cand_v} was tested on data manifest {sa}..., {alias} "
            f"v{holder_v} on {sb}...; their macro-F1 are not comparable")})
        return checks
    f_c, f_h = _macro_f1(cand), _macro_f1(holder)
    if f_c is None or f_h is None:
        checks.append({"check": "macro-f1", "passed": False, "message": (
            f"cannot compare test macro-F1 (v{cand_v}: {f_c}, {alias} v{holder_v}: {f_h})")})
        return checks
    drop = f_h - f_c
    ok = drop <= tolerance + 1e-12
    checks.append({"check": "macro-f1", "passed": ok, "message": (
        f"test macro-F1 {f_c:.4f} is {drop:.4f} below {alias} v{holder_v}'s {f_h:.4f} "
        f"(tolerance {tolerance:g})" if not ok else
        f"test macro-F1 {f_c:.4f} vs {alias} v{holder_v}'s {f_h:.4f} (tolerance {tolerance:g})")})
    return checks


# ---------------------------------------------------------------- promote / rollback

def holder_of(client, name: str, alias: str) -> int | None:
    try:
        return aliases_of(client, name).get(alias)
    except Exception as exc:
        if mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model named {name!r}") from None
        raise


def _existing_version(client, name: str, version: int) -> None:
    try:
        client.get_model_version(name, str(int(version)))
    except Exception as exc:
        if mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"{name} has no version {version}") from None
        raise


def promote(name: str, version: int, *, alias: str = DEFAULT_ALIAS, force: bool = False,
            tolerance: float = 0.01, reason: str | None = None, who: str | None = None) -> dict:
    """Move ALIAS to VERSION if the gate passes (or `force`); return the history entry
    (with "checks"). Raises PromotionRefused naming each failed check."""
    validate_name(name)
    validate_alias(alias)
    version = int(version)
    client = mlflow_client()
    with store_lock():
        holder_v = holder_of(client, name, alias)  # also: the model exists
        _existing_version(client, name, version)
        entries = _settle(client, name)
        cand = open_version(name, version, client=client)  # verified, as registered
        if holder_v == version:
            return {"action": "none", "alias": alias, "from": version, "to": version,
                    "checks": [], "message": f"{alias} already points to {name} v{version}"}
        holder = _holder_bundle(name, holder_v)
        checks = gate_checks(cand, version, holder, holder_v, alias, tolerance)
        failed = [c["message"] for c in checks if not c["passed"]]
        if failed and not force:
            raise PromotionRefused(
                f"refused to move {name}@{alias} to v{version}: " + "; ".join(failed)
                + " (use --force to promote anyway)")
        entry = _entry("promote", alias, holder_v, version, forced=bool(failed),
                       overridden=failed, reason=reason, who=who)
        done = _move_alias(client, name, entry, entries)
    return {**done, "checks": checks}


def _holder_bundle(name: str, holder_v: int | None) -> Bundle | None:
    """The current holder's metadata for comparison; its files were verified when it was
    promoted, and a holder whose folder vanished must not block replacing it."""
    if holder_v is None:
        return None
    try:
        return load_bundle(version_dir(name, holder_v), verify=False)
    except Exception:  # noqa: BLE001 - replacing a broken holder is the fix, not an error
        return None


def previous_holder(entries: list[dict], alias: str, current: int | None) -> int | None:
    """Undo the last move: replay done moves of ALIAS as a stack (promote pushes, rollback
    pops back to its target) and return the entry below the current holder."""
    stack: list[int] = []
    for e in entries:
        if e.get("alias") != alias or e.get("state") != "done":
            continue
        if e["action"] == "rollback":
            while stack and stack[-1] != e["to"]:
                stack.pop()
            stack = stack or [e["to"]]
        else:
            if not stack and e.get("from") is not None:
                stack = [e["from"]]
            stack.append(e["to"])
    if len(stack) >= 2 and stack[-1] == current:
        return stack[-2]
    return None


def rollback(name: str, *, alias: str = DEFAULT_ALIAS, reason: str | None = None,
             who: str | None = None) -> dict:
    """Move ALIAS back to the version that held it before the last move."""
    validate_name(name)
    validate_alias(alias)
    client = mlflow_client()
    with store_lock():
        current = holder_of(client, name, alias)
        if current is None:
            raise RegistryError(f"no version of {name} holds the alias {alias!r}")
        entries = _settle(client, name)
        target = previous_holder(entries, alias, current)
        if target is None:
            raise RegistryError(f"nothing to roll back to: the history of {name}@{alias} has no "
                                f"holder before v{current}")
        open_version(name, target, client=client)  # verify before it serves again
        entry = _entry("rollback", alias, current, target, forced=False, overridden=[],
                       reason=reason, who=who)
        return _move_alias(client, name, entry, entries)
