"""Gated promotion, rollback and the history of alias moves.

An alias (``production``) is an MLflow registered-model alias. Promotion is refused, unless
forced, for a version whose export parity gate failed or is missing, or whose macro-F1 is
more than `tolerance` below the current holder's.

The comparison behind the regression gate is `sightwise.registry.compare` (comparable by
construction, also when the two versions were tested on different images).

Every move is written to ``$SIGHTWISE_HOME/history/NAME.jsonl`` as "pending" before the
alias moves and marked "done" after; a writer killed in between leaves a pending entry that
the next writer settles by looking at where the alias actually points. All of it happens
under the store lock, so concurrent promotions are serialised.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sightwise.bundle import Bundle, atomic_write_bytes, load_bundle
from sightwise.registry.compare import compare_versions
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
    """[{"check", "passed", "message"}]: parity, then macro-F1 against the holder, on the
    same test data or, failing that, on the test images neither trained on."""
    state = parity_state(cand.meta.raw)
    checks = [{"check": "parity", "passed": state == "passed",
               "message": _parity_message(cand, cand_v, state)}]
    if holder is None:
        return checks
    comp = compare_versions(cand, holder)
    if comp["method"] == "not-comparable":
        sa = str(cand.meta.data.get("manifest_sha256", "?"))[:12]
        sb = str(holder.meta.data.get("manifest_sha256", "?"))[:12]
        checks.append({"check": "test-data", "passed": False, "comparison": comp, "message": (
            f"test data differ: v{cand_v} was tested on data manifest {sa}..., {alias} "
            f"v{holder_v} on {sb}...; their macro-F1 are not comparable: {comp['reason']}")})
        return checks
    f_c, f_h = comp["candidate"]["macro_f1"], comp["holder"]["macro_f1"]
    if f_c is None or f_h is None:
        checks.append({"check": "macro-f1", "passed": False, "comparison": comp, "message": (
            f"cannot compare test macro-F1 (v{cand_v}: {f_c}, {alias} v{holder_v}: {f_h})")})
        return checks
    drop = f_h - f_c
    ok = drop <= tolerance + 1e-12
    what, on = "test macro-F1", ""
    if comp["method"] == "common-images":
        lo, hi = comp["difference"]["macro_f1_ci"]
        what, on = "macro-F1", (f" on {comp['n']} test images neither version trained on "
                                f"(difference {-drop:+.4f}, 95 % CI {lo:+.4f} to {hi:+.4f})")
    checks.append({"check": "macro-f1", "passed": ok, "comparison": comp, "message": (
        f"{what} {f_c:.4f} is {drop:.4f} below {alias} v{holder_v}'s {f_h:.4f}{on} "
        f"(tolerance {tolerance:g})" if not ok else
        f"{what} {f_c:.4f} vs {alias} v{holder_v}'s {f_h:.4f}{on} (tolerance {tolerance:g})")})
    return checks


def shadow_check(summary: dict | None, required: int, version: int) -> dict:
    """At least `required` shadow predictions of `version` on live traffic; the message
    reports agreement and, for labelled requests, both models' accuracy."""
    n = int((summary or {}).get("n") or 0)
    msg = f"{n} shadow prediction(s) of v{version} logged ({required} required)"
    if n and summary.get("agreement") is not None:
        msg += f", agreeing with the primary model on {summary['agreement']:.1%}"
    if summary and summary.get("labelled"):
        msg += (f"; on {summary['labelled']} labelled request(s) v{version} "
                f"{summary['shadow_accuracy']:.1%} vs primary {summary['primary_accuracy']:.1%}")
    return {"check": "shadow", "passed": n >= required, "message": msg, "shadow": summary}


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
            tolerance: float = 0.01, reason: str | None = None, who: str | None = None,
            against: str | None = None, require_shadow: int | None = None,
            shadow: dict | None = None) -> dict:
    """Move ALIAS to VERSION if the gate passes (or `force`); return the history entry
    (with "checks"). Raises PromotionRefused naming each failed check.

    `against`: the alias whose holder the candidate is compared with (default ALIAS itself;
    the pipeline moves `staging` comparing against `production`). `require_shadow`: at
    least that many shadow predictions in `shadow` (a `sightwise.shadowlog`
    summary)."""
    validate_name(name)
    validate_alias(alias)
    against = validate_alias(against or alias)
    version = int(version)
    client = mlflow_client()
    # The comparison may run both graphs: do it before taking the store lock (its result
    # is cached per bundle pair, so the check under the lock is a file read).
    _warm_comparison(client, name, version, against)
    with store_lock():
        holder_v = holder_of(client, name, alias)  # also: the model exists
        _existing_version(client, name, version)
        entries = _settle(client, name)
        cand = open_version(name, version, client=client)  # verified, as registered
        if holder_v == version:
            return {"action": "none", "alias": alias, "from": version, "to": version,
                    "checks": [], "message": f"{alias} already points to {name} v{version}"}
        base_v = holder_v if against == alias else holder_of(client, name, against)
        base = _holder_bundle(name, base_v) if base_v != version else None
        checks = gate_checks(cand, version, base, base_v, against, tolerance)
        if require_shadow:
            checks.append(shadow_check(shadow, int(require_shadow), version))
        failed = [c["message"] for c in checks if not c["passed"]]
        if failed and not force:
            raise PromotionRefused(
                f"refused to move {name}@{alias} to v{version}: " + "; ".join(failed)
                + " (use --force to promote anyway)")
        entry = _entry("promote", alias, holder_v, version, forced=bool(failed),
                       overridden=failed, reason=reason, who=who)
        done = _move_alias(client, name, entry, entries)
    return {**done, "checks": checks}


def _warm_comparison(client, name: str, version: int, against: str) -> None:
    try:
        base_v = holder_of(client, name, against)
        if base_v is None or base_v == version:
            return
        base = _holder_bundle(name, base_v)
        if base is not None:
            compare_versions(load_bundle(version_dir(name, version), verify=False), base)
    except Exception:  # noqa: BLE001 - only a warm-up: the gate under the lock decides
        return


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
