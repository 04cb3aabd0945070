"""The shadow log: records round-trip, torn and foreign lines are skipped, writers in
threads and processes never interleave a line, a writer that cannot write drops and
counts instead of raising, and the summary counts by hand."""

from __future__ import annotations

import json
import os
import threading

import pytest

from sightwise.shadowlog import (
    ShadowWriter,
    read_shadow,
    shadow_dir,
    shadow_record,
    shadow_summary,
)


def _rec(primary, shadow, version=2, truth=None, sha=None, error=None):
    return shadow_record(model="steel", primary_version=1, primary_label=primary, primary_p=0.9,
                         shadow_version=version, shadow_label=shadow, shadow_p=0.8,
                         shadow_error=error, true_label=truth, sha256=sha)


def test_round_trip_and_the_summary_by_hand(tmp_path):
    with ShadowWriter("steel", home=tmp_path) as w:
        w.append(_rec("ok", "ok", truth="ok"))        # both right
        w.append(_rec("ok", "dent", truth="dent"))    # shadow right, primary wrong
        w.append(_rec("dent", "dent"))                 # no label yet ...
        w.append(_rec("ok", "ok", sha="s4"))           # ... labelled later through sha256
        w.append(_rec("ok", None, error="timeout"))    # shadow failed: not counted
        w.append(_rec("ok", "ok", version=3))          # another candidate
    recs = list(read_shadow("steel", home=tmp_path))
    assert len(recs) == 6 and recs[0]["primary"] == {"version": 1, "label": "ok", "p": 0.9}
    s = shadow_summary("steel", 2, home=tmp_path, labels={"s4": "dent"})
    assert (s["n"], s["errors"], s["labelled"]) == (4, 1, 3)
    assert s["agreement"] == pytest.approx(3 / 4)
    assert s["primary_accuracy"] == pytest.approx(1 / 3) and s["shadow_accuracy"] == pytest.approx(2 / 3)
    assert s["primary_versions"] == {"1": 4}
    assert shadow_summary("steel", 9, home=tmp_path)["n"] == 0


def test_malformed_records_are_refused():
    with pytest.raises(ValueError, match="probability"):
        shadow_record(model="m", primary_version=1, primary_label="a", primary_p=1.5,
                      shadow_version=2, shadow_label="a")
    with pytest.raises(ValueError, match="needs a label"):
        shadow_record(model="m", primary_version=1, primary_label="a", shadow_version=2)
    with pytest.raises(Exception, match="invalid model name"):
        shadow_record(model="../x", primary_version=1, primary_label="a", shadow_version=2,
                      shadow_label="a")


def test_torn_and_foreign_lines_are_skipped(tmp_path):
    with ShadowWriter("steel", home=tmp_path) as w:
        w.append(_rec("ok", "ok"))
    folder = shadow_dir("steel", tmp_path)
    (folder / "x.jsonl").write_bytes(b'{"not": "ours"}\nnot json\n'
                                     + json.dumps(_rec("a", "a")).encode() + b"\n"
                                     + b'{"v": 1, "time": 1, "prim')  # killed mid-line
    counts = {}
    assert len(list(read_shadow("steel", home=tmp_path, counts=counts))) == 2
    assert counts["skipped"] == 3


def test_threads_write_whole_lines(tmp_path):
    w = ShadowWriter("steel", home=tmp_path)
    threads = [threading.Thread(target=lambda: [w.append(_rec("ok", "ok")) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    w.close()
    assert w.written == 800 and shadow_summary("steel", 2, home=tmp_path)["n"] == 800


def test_a_writer_that_cannot_write_drops_and_never_raises(tmp_path):
    blocker = tmp_path / "shadow"
    blocker.write_text("a file where the folder should be")
    w = ShadowWriter("steel", home=blocker)
    assert w.append(_rec("ok", "ok")) is False and w.dropped == 1
    assert w.append({"time": float("nan")}) is False and w.dropped == 2  # not JSON-able
    w.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_processes_each_write_their_own_file(tmp_path):
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            with ShadowWriter("steel", home=tmp_path) as w:
                for _ in range(50):
                    w.append(_rec("ok", "dent"))
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert len(list(shadow_dir("steel", tmp_path).glob("*.jsonl"))) == 3
    s = shadow_summary("steel", 2, home=tmp_path)
    assert s["n"] == 150 and s["agreement"] == 0.0
