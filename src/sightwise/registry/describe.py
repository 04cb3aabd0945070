"""`models show` records and the text that `models list` / `models show` print."""

from __future__ import annotations

from sightwise.registry.promote import settled_history
from sightwise.registry.resolve import alias_version, check_version, parse_ref
from sightwise.registry.store import (
    RegistryError,
    check_reference_text,
    mlflow_client,
    validate_name,
)
from sightwise.registry.versions import lineage, search_versions, version_record


def show_record(ref: str) -> dict:
    """NAME (latest version), NAME@ALIAS or NAME/VERSION -> its record, "lineage" and the
    model's "history" of alias moves."""
    text = check_reference_text(str(ref))
    client = mlflow_client()
    parsed = parse_ref(text)
    if parsed is not None:
        name, alias, v = parsed
        version = (alias_version(client, name, alias) if alias
                   else check_version(client, name, v))
    elif "@" in text or "/" in text:
        raise RegistryError(f"invalid reference {text!r}: use NAME, NAME@ALIAS or NAME/VERSION")
    else:
        name = validate_name(text)
        versions = [int(v.version) for v in search_versions(client, name)]
        if not versions:
            raise RegistryError(f"no registered model named {name!r} (or it has no versions)")
        version = max(versions)
    rec = version_record(client, name, version)
    rec["lineage"] = lineage(name, version)
    rec["history"] = settled_history(client, name)
    return rec


def format_versions(records: list[dict]) -> str:
    if not records:
        return "no registered versions"
    head = f"{'model':20s} {'ver':>4s}  {'aliases':14s} {'macro-F1':>8s} {'accuracy':>8s} " \
           f"{'parity':8s} {'created':20s} parent"
    lines = [head]
    for r in records:
        m = r["metrics"]
        parent = r.get("parent")
        lines.append(
            f"{r['name'][:20]:20s} {r['version']:>4d}  {','.join(r['aliases']) or '-':14s} "
            f"{_num(m.get('macro_f1')):>8s} {_num(m.get('accuracy')):>8s} {r['parity']:8s} "
            f"{r['created'] or '-':20s} "
            f"{_ref(parent) if parent else '-'}" + (f"  [{r['error']}]" if r.get("error") else ""))
    return "\n".join(lines)


def format_history(name: str, entries: list[dict]) -> str:
    if not entries:
        return f"{name}: no alias moves yet"
    lines = [f"{name}: alias moves (oldest first)"]
    for e in entries:
        src = f"v{e['from']}" if e.get("from") is not None else "-"
        note = " FORCED (" + "; ".join(e.get("overridden") or []) + ")" if e.get("forced") else ""
        state = "" if e.get("state") == "done" else f" [{e.get('state')}]"
        reason = f" reason: {e['reason']}" if e.get("reason") else ""
        lines.append(f"  {e['time']}  {e['who']}  {e['action']:8s} {e['alias']}: {src} -> "
                     f"v{e['to']}{note}{reason}{state}")
    return "\n".join(lines)


def format_show(rec: dict) -> str:
    lin = rec["lineage"]
    data = lin.get("data", {})
    parity = lin.get("parity", {})
    lines = [
        f"{rec['name']} v{rec['version']}  aliases: {', '.join(rec['aliases']) or '-'}  "
        f"created {rec['created']}",
        f"  bundle:      {lin['bundle_dir']}",
        f"  model:       {lin.get('model', {}).get('name')} ({lin.get('model', {}).get('strategy')}),"
        f" {len(lin.get('classes', []))} classes",
        "  metrics:     " + ", ".join(f"{k} {_num(v)}" for k, v in rec["metrics"].items()),
        f"  parity:      {rec['parity']}" + (
            " (" + "; ".join(parity.get("failed_checks") or []) + ")"
            if parity.get("failed_checks") else ""),
        f"  data sha256: {data.get('manifest_sha256')}  ({data.get('root')})",
        f"  git commit:  {lin.get('git_commit')}",
        "  packages:    " + ", ".join(f"{k} {v}" for k, v in lin.get("versions", {}).items()),
        f"  parent:      {_ref(lin['parent']) if lin.get('parent') else '-'}",
        f"  run:         {rec.get('run_id') or '-'}",
        "  config:      " + ", ".join(f"{k}={v}" for k, v in lin.get("config", {}).items()),
    ]
    return "\n".join(lines) + "\n" + format_history(rec["name"], rec["history"])


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _ref(parent: dict) -> str:
    return f"{parent.get('name') or '?'}/{parent['version']}"
