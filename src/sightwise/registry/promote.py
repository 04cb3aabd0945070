"""Gated promotion, rollback and the history of alias moves.

An alias (``production``) is an MLflow registered-model alias. Promotion is refused, unless
forced, for a version whose export parity gate failed or is missing, or whose macro-F1 is
more than `tolerance` below the current holder's.

Comparable by construction: when both versions were tested on the same images, their
recorded test metrics are compared. When the test data differ (new images, relabelled ones),
both ONNX graphs are run on the test images that neither version saw in training (neither
one's train nor validation split), and the difference comes with its n and a paired
bootstrap interval; the result is cached per pair of bundle digests. "Not comparable" is
the last resort (no such image left, or none readable), and says why.

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

import numpy as np

from sightwise.bundle import Bundle, atomic_write_bytes, load_bundle, sha256_path
from sightwise.errors import SightwiseError
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


def _recorded(bundle: Bundle) -> dict:
    test = bundle.meta.metrics.get("test", {})
    return {k: float(test[k]) if isinstance(test.get(k), (int, float)) else None
            for k in ("accuracy", "macro_f1")}


# ---------------------------------------------------------------- comparable by construction

N_BOOT = 2000
BOOT_SEED = 0
EVAL_BATCH = 32


def compare_versions(cand: Bundle, holder: Bundle, *, log=None) -> dict:
    """How `cand` compares with `holder`: {"method", "n", "candidate", "holder",
    "difference", ...}. Methods: "same-test-data" (their recorded test metrics),
    "common-images" (both graphs on the test images neither trained on, with a paired
    bootstrap interval of candidate minus holder) or "not-comparable" (with "reason")."""
    if same_test_data(cand, holder):
        test = cand.meta.metrics.get("test", {})
        c, h = _recorded(cand), _recorded(holder)
        diff = {k: None if c[k] is None or h[k] is None else c[k] - h[k] for k in c}
        return {"method": "same-test-data", "n": test.get("n"), "candidate": c, "holder": h,
                "difference": diff}
    path = _comparison_path(cand, holder)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("digests") == [cand.digest, holder.digest]:
            return cached
    except (OSError, ValueError):
        pass
    result = {**_compare_on_common_images(cand, holder, log or (lambda _m: None)),
              "digests": [cand.digest, holder.digest]}
    try:  # registered bundles never change, so the pair's result never goes stale
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(result, indent=1).encode("utf-8"))
    except OSError:
        pass
    return result


def _comparison_path(cand: Bundle, holder: Bundle) -> Path:
    return sightwise_home() / "comparisons" / f"{cand.digest[:24]}-{holder.digest[:24]}.json"


def _not_comparable(reason: str) -> dict:
    return {"method": "not-comparable", "n": 0, "reason": reason}


def common_test_samples(cand: Bundle, holder: Bundle) -> tuple[list, list[str], dict]:
    """(samples, their class names, exclusions): the test images (by sha256) of either
    version that neither saw in its train or validation split, labelled alike by both,
    with a source whose bytes still match the manifest."""
    from sightwise.export.manifest import bundle_samples
    from sightwise.types import Sample

    per = {b.digest: {sp: bundle_samples(b, sp) for sp in ("train", "val", "test")}
           for b in (cand, holder)}
    seen = {s.sha256 for b in per.values() for sp in ("train", "val") for s in b[sp]}
    pool: dict[str, dict] = {}
    for b in (cand, holder):
        for s in per[b.digest]["test"]:
            if not s.sha256 or s.sha256 in seen:
                continue
            e = pool.setdefault(s.sha256, {"label": b.classes[s.label], "sources": [],
                                           "conflict": False})
            e["conflict"] |= e["label"] != b.classes[s.label]
            e["sources"].append(s.source)
    excluded = {"seen_in_training": len({s.sha256 for b in per.values() for s in b["test"]
                                         if s.sha256 in seen}),
                "label_disagreements": sum(e["conflict"] for e in pool.values()),
                "unreadable": 0}
    names = sorted({e["label"] for e in pool.values() if not e["conflict"]})
    samples = []
    for sha, e in sorted(pool.items()):
        if e["conflict"]:
            continue
        source = next((src for src in e["sources"] if _matches(src, sha)), None)
        if source is None:
            excluded["unreadable"] += 1
            continue
        samples.append(Sample(source, names.index(e["label"]), "test", sha))
    return samples, names, excluded


def _matches(source: str, sha: str) -> bool:
    if source.startswith("npz://"):
        return True  # array images: checked by the manifest hash of their runs
    try:
        return Path(source).is_file() and sha256_path(source) == sha
    except OSError:
        return False


def _compare_on_common_images(cand: Bundle, holder: Bundle, log) -> dict:
    try:
        cand, holder = load_bundle(cand.path), load_bundle(holder.path)  # graphs verified
        samples, names, excluded = common_test_samples(cand, holder)
    except (SightwiseError, OSError, KeyError, ValueError) as exc:
        return _not_comparable(f"cannot read both manifests ({exc})")
    if not samples:
        return {**_not_comparable(
            "no test image of either version lies outside both versions' training data and "
            f"is still readable with the same label ({excluded})"), "excluded": excluded}
    try:
        kept, pred_c = _predict_names(cand, samples, log)
        kept_h, pred_h = _predict_names(holder, samples, log)
    except (SightwiseError, OSError) as exc:
        return _not_comparable(f"cannot run both graphs ({exc})")
    common = sorted(set(kept) & set(kept_h))
    excluded["unreadable"] += len(samples) - len(common)
    if not common:
        return _not_comparable("none of the common test images could be decoded")
    y = np.array([samples[i].label for i in common])
    classes = sorted(set(names) | set(cand.classes) | set(holder.classes))
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[names[v]] for v in y])
    pc = np.array([idx[pred_c[i]] for i in common])
    ph = np.array([idx[pred_h[i]] for i in common])
    stats = paired_bootstrap(y, pc, ph, len(classes), n_boot=N_BOOT, seed=BOOT_SEED)
    log(f"compared on {len(common)} test images neither version trained on")
    return {"method": "common-images", "n": len(common), **stats, "excluded": excluded,
            "bootstrap": {"resamples": N_BOOT, "seed": BOOT_SEED, "interval": 0.95}}


def _predict_names(bundle: Bundle, samples: list, log) -> tuple[list[int], dict[int, str]]:
    """Indices of the samples that decoded, and each one's top class name, from the
    bundle's ONNX graph (the runtime's input path: decode, resize, normalize)."""
    from sightwise.core import make_session
    from sightwise.data.cache import build_cache
    from sightwise.data.datasets import Dataset
    from sightwise.data.preprocess import normalize

    pre = bundle.preprocessing
    cache, _ = build_cache(Dataset([], samples, Path("."), "manifest"), pre, progress=False)
    position = {s.source: i for i, s in enumerate(samples)}
    kept = [position[s.source] for s in cache.samples]
    session = make_session(bundle.graph(), quiet=True)
    images = np.asarray(cache.images)
    logits = [session.run(["logits"], {"image": normalize(images[i:i + EVAL_BATCH], pre)})[0]
              for i in range(0, len(images), EVAL_BATCH)]
    top = np.concatenate(logits).argmax(1) if logits else np.zeros(0, int)
    return kept, {k: bundle.classes[int(t)] for k, t in zip(kept, top, strict=True)}


def macro_f1_from_counts(tp, fp, fn) -> np.ndarray:
    """Macro-F1 over the classes that occur (as truth or prediction), as scikit-learn's
    f1_score(average="macro", zero_division=0) counts them; works on stacked rows.

    >>> float(macro_f1_from_counts(np.array([2, 0, 0]), np.array([0, 1, 0]), np.array([1, 0, 0])))
    0.4
    """
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    present = (tp + fp + fn) > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def paired_bootstrap(y, pred_a, pred_b, n_classes: int, *, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> dict:
    """Accuracy and macro-F1 of A and B on the same images, and A minus B with a 95 %
    percentile interval from `n_boot` resamples of the images (the same resample for both,
    so the interval is of the paired difference)."""
    y, pa, pb = (np.asarray(a, np.int64) for a in (y, pred_a, pred_b))
    n = len(y)
    eye = np.eye(n_classes)
    truth = eye[y]
    one = {"a": (eye[pa], pa == y), "b": (eye[pb], pb == y)}
    rng = np.random.default_rng(seed)
    diffs = {"accuracy": [], "macro_f1": []}
    for start in range(0, n_boot, 250):  # 250 x n weights at a time bounds the memory
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, n_boot - start)).astype(float)
        vals = {}
        for key, (pred, correct) in one.items():
            tp = w @ (truth * pred)
            vals[key] = (w @ correct / n,
                         macro_f1_from_counts(tp, w @ pred - tp, w @ truth - tp))
        diffs["accuracy"].append(vals["a"][0] - vals["b"][0])
        diffs["macro_f1"].append(vals["a"][1] - vals["b"][1])
    point = {}
    for key, (pred, correct) in one.items():
        tp = (truth * pred).sum(0)
        point[key] = {"accuracy": float(correct.mean()),
                      "macro_f1": float(macro_f1_from_counts(tp, pred.sum(0) - tp,
                                                             truth.sum(0) - tp))}
    diff = {}
    for metric, parts in diffs.items():
        d = np.concatenate(parts)
        diff[metric] = point["a"][metric] - point["b"][metric]
        diff[f"{metric}_ci"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
    return {"candidate": point["a"], "holder": point["b"], "difference": diff}


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
