"""The hash-chained audit log: every kind of tampering is caught and named by line."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp

from typer.testing import CliRunner

from sightwise.privacy.audit import AuditLog, _record_hash, verify_audit
from sightwise.privacy.cli import privacy_app

TOKEN = "sw_live_5f1e0c9a-secret-token"


def _log(tmp_path, n: int = 6) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append("predict", client="10.0.0.7", token=TOKEN, model_version="parts-qc/3",
                   image_sha256=hashlib.sha256(bytes([i])).hexdigest(),
                   result={"label": "ok", "p": 0.9})
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def _write(log: AuditLog, lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(lines))


def test_intact_log_verifies_and_never_holds_the_token(tmp_path):
    log = _log(tmp_path)
    report = verify_audit(log.path)
    assert report.ok and report.records == 6 and report.head == {
        "seq": 6, "line_sha256": hashlib.sha256(_lines(log)[-1].rstrip(b"\n")).hexdigest()}
    raw = log.path.read_bytes()
    assert TOKEN.encode() not in raw
    record = json.loads(_lines(log)[0])
    assert record["token_id"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:16]
    assert set(record) >= {"time", "client", "token_id", "action", "model_version",
                           "image_sha256", "result", "prev", "hash", "seq"}
    assert log.path.stat().st_mode & 0o777 == 0o600
    assert [r["seq"] for r in log.tail(2)] == [5, 6] and log.head() == report.head


def test_an_edited_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[2] = lines[2].replace(b'"label":"ok"', b'"label":"no"')
    _write(log, lines)
    problems = verify_audit(log.path).problems
    assert len(problems) >= 1 and problems[0].startswith("line 3 (seq 3): edited")


def test_an_edit_with_a_recomputed_hash_breaks_the_chain_at_the_next_line(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    record = json.loads(lines[2])
    record["client"] = "someone else"
    record["hash"] = _record_hash(record)
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _write(log, lines)
    problems = verify_audit(log.path).problems
    assert problems == [problems[0]] and problems[0].startswith("line 4 (seq 4): chain broken")


def test_a_deleted_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    problems = verify_audit(log.path).problems
    assert problems == ["line 4 (seq 5): seq 4 deleted before this line"]


def test_reordered_lines_are_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    problems = verify_audit(log.path).problems
    assert problems[0].startswith("line 2 (seq 3): out of order: seq 2 comes later")
    assert problems[1].startswith("line 3 (seq 2): out of order")


def test_an_inserted_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines.insert(2, lines[4])  # a replayed copy of record 5
    _write(log, lines)
    problems = verify_audit(log.path).problems
    assert problems and problems[0].startswith("line 3 (seq 5): out of order")


def test_a_cut_tail_is_caught_with_the_head_kept_elsewhere(tmp_path):
    log = _log(tmp_path)
    head = log.head()
    _write(log, _lines(log)[:-2])
    assert verify_audit(log.path).ok  # a shorter chain is still a chain...
    report = verify_audit(log.path, expect_head=head)  # ...but not the one recorded
    assert not report.ok and "expected the last record to be seq 6" in report.problems[0]


def _append_many(path: str, worker: int, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("predict", client=f"worker-{worker}", image_sha256=str(i))


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    report = verify_audit(path)
    assert report.ok and report.records == 75 and report.head["seq"] == 75


def test_verify_audit_command_exit_codes(tmp_path):
    log = _log(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(privacy_app, ["verify-audit", str(log.path)])
    assert ok.exit_code == 0 and "chain intact" in ok.output
    lines = _lines(log)
    del lines[1]
    _write(log, lines)
    bad = runner.invoke(privacy_app, ["verify-audit", str(log.path), "--json"])
    assert bad.exit_code == 1 and json.loads(bad.output)["problems"] == [
        "line 2 (seq 3): seq 2 deleted before this line"]
    missing = runner.invoke(privacy_app, ["verify-audit", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "error:" in missing.output
