"""The labelling session: leases, answers, undo, history, restart, broken images, order."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.label.order import centred_unit, kcenter_greedy
from sightwise.label.pool import PoolError, read_pool
from sightwise.label.session import LabelSession, ModelView, SessionError
from sightwise.label.store import SKIP, UNDO, LabelStore, final_labels, read_answers

CLASSES = ["red", "green", "blue"]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def session(pool_dir, out, **kw):
    kw.setdefault("order", "random")
    return LabelSession(read_pool(pool_dir), LabelStore(out), CLASSES, log=lambda m: None, **kw)


def test_two_annotators_never_get_the_same_image_while_leased(pool_dir, tmp_path):
    s = session(pool_dir, tmp_path / "l.csv")
    seen = {"ann": [], "bob": []}
    for _ in range(6):
        for who in seen:
            item = s.next_item(who)
            assert s.next_item(who)["id"] == item["id"]  # asking again: the same lease
            seen[who].append(item["id"])
            s.answer(who, item["id"], "red")
    assert not set(seen["ann"]) & set(seen["bob"])
    assert len(set(seen["ann"]) | set(seen["bob"])) == 12
    assert s.next_item("ann") is None
    assert s.progress()["labelled"] == 12 and s.progress()["queued"] == 0


def test_an_expired_lease_returns_the_image_to_the_queue(pool_dir, tmp_path):
    clock = Clock()
    s = session(pool_dir, tmp_path / "l.csv", lease_s=60, clock=clock)
    held = s.next_item("ann")["id"]
    others = set()
    for _ in range(11):
        item = s.next_item("bob")
        others.add(item["id"])
        s.skip("bob", item["id"])
    assert held not in others and s.next_item("bob") is None
    clock.t = 61.0  # ann walked away
    assert s.next_item("bob")["id"] == held


def test_answers_are_on_disk_and_a_restart_continues(pool_dir, tmp_path):
    out = tmp_path / "l.csv"
    s = session(pool_dir, out)
    done = []
    for label in ("red", "green", "blue"):
        item = s.next_item("ann")
        s.answer("ann", item["id"], label)
        done.append((item["path"], label))
    skipped = s.next_item("ann")
    s.skip("ann", skipped["id"])
    rows = read_answers(out)  # on disk before the session is closed
    assert [(r.path, r.label) for r in rows] == [(f"pool/{p}", lab) for p, lab in done] + [
        (f"pool/{skipped['path']}", SKIP)]
    s.store.close()

    s2 = session(pool_dir, out)
    offered = {s2.next_item("ann")["path"]}
    assert not offered & {p for p, _ in done} and skipped["path"] not in offered
    assert [h["path"] for h in s2.history("ann")] == [p for p, _ in done] + [skipped["path"]]
    assert s2.progress()["labelled"] == 3 and s2.progress()["skipped"] == 1


def test_undo_withdraws_the_latest_answer_and_leases_it_back(pool_dir, tmp_path):
    out = tmp_path / "l.csv"
    s = session(pool_dir, out)
    first = s.next_item("ann")
    s.answer("ann", first["id"], "red")
    second = s.next_item("ann")
    s.answer("ann", second["id"], "blue")
    back = s.undo("ann")
    assert back["id"] == second["id"] and back["label"] is None
    assert s.next_item("ann")["id"] == second["id"]  # leased back to ann
    assert s.next_item("bob")["id"] not in (first["id"], second["id"])
    assert read_answers(out)[-1].label == UNDO
    assert final_labels(read_answers(out)) == {f"pool/{first['path']}": "red"}
    assert s.undo("ann")["id"] == first["id"] and s.undo("ann") is None


def test_relabelling_from_history_keeps_one_entry(pool_dir, tmp_path):
    s = session(pool_dir, tmp_path / "l.csv")
    item = s.next_item("ann")
    s.answer("ann", item["id"], "red")
    s.answer("ann", item["id"], "green")  # changed from the history view
    assert [h["label"] for h in s.history("ann")] == ["green"]
    assert s.undo("ann")["label"] == "red"  # the earlier answer stands again


def test_bad_requests_are_refused_and_nothing_is_written(pool_dir, tmp_path):
    out = tmp_path / "l.csv"
    s = session(pool_dir, out)
    item = s.next_item("ann")
    with pytest.raises(SessionError, match="unknown class 'purple'"):
        s.answer("ann", item["id"], "purple")
    with pytest.raises(PoolError, match="not in the pool"):
        s.answer("ann", 999, "red")
    with pytest.raises(SessionError, match="annotator"):
        s.answer("a,b", item["id"], "red")
    assert read_answers(out) == []


def test_a_broken_image_is_reported_and_never_offered(pool_dir, tmp_path):
    (pool_dir / "aaa_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    logged = []
    s = LabelSession(read_pool(pool_dir), LabelStore(tmp_path / "l.csv"), CLASSES,
                     order="random", log=logged.append)
    bad = s.pool.index_of("aaa_broken.png")
    s.mark_broken(bad, "corrupt or truncated image data")
    offered = []
    while (item := s.next_item("ann")) is not None:
        offered.append(item["id"])
        s.answer("ann", item["id"], "red")
    assert bad not in offered and len(offered) == 12
    assert s.progress()["broken_paths"] == ["aaa_broken.png"]
    assert "aaa_broken.png" in logged[0]
    with pytest.raises(SessionError, match="cannot be decoded"):
        s.answer("ann", bad, "red")


def fake_model(n, classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    return ModelView("local-test", list(classes), rng.dirichlet(np.ones(len(classes)), n)
                     .astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32))


def test_kcenter_order_follows_the_embeddings(pool_dir, tmp_path):
    model = fake_model(12)
    s = session(pool_dir, tmp_path / "l.csv", model=model, order="kcenter", batch=4)
    got = []
    for _ in range(4):
        item = s.next_item("ann")
        got.append(item["id"])
        s.answer("ann", item["id"], "red")
    assert got == kcenter_greedy(centred_unit(model.emb), 4)
    assert s.item(got[0])["suggestions"][0]["label"] in CLASSES


def test_margin_order_uses_the_models_calibrated_probabilities(pool_dir, tmp_path):
    model = fake_model(12, classes=["blue", "green", "red", "other"])  # a superset, reordered
    s = session(pool_dir, tmp_path / "l.csv", model=model, order="margin", batch=3)
    cols = [2, 1, 0]
    p = model.probs[:, cols] / model.probs[:, cols].sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    expected = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:3].tolist()
    got = []
    for _ in range(3):
        item = s.next_item("ann")
        got.append(item["id"])
        s.answer("ann", item["id"], "red")
    assert got == expected


def test_kcenter_without_a_bundle_is_refused(pool_dir, tmp_path):
    with pytest.raises(SessionError, match="needs a bundle"):
        session(pool_dir, tmp_path / "l.csv", order="kcenter")


def test_review_shows_the_audits_suspects_in_its_order(pool_dir, tmp_path):
    from sightwise.label.labelling import open_session, review_pool

    p = [str(pool_dir / f) for f in ("blue_000.png", "red_001.png", "green_002.png", "red_003.png")]
    result = {"suspects": [{"path": p[0], "given": "red", "suggested": "blue", "score": 0.97},
                           {"path": p[1], "given": "green", "suggested": "red", "score": 0.6}],
              "conflicting_duplicates": [{"a": {"path": p[2], "label": "green", "split": None},
                                          "b": {"path": p[3], "label": "red", "split": None},
                                          "similarity": 1.0}]}
    s = open_session(review_pool(result), str(tmp_path / "review.csv"), classes=CLASSES,
                     log=lambda m: None)
    shown = []
    while (item := s.next_item("ann")) is not None:
        shown.append((item["name"], item["given"], [g["label"] for g in item["suggestions"]]))
        s.answer("ann", item["id"], item["suggestions"][0]["label"] if item["suggestions"]
                 else item["given"])
    assert shown == [("blue_000.png", "red", ["blue"]), ("red_001.png", "green", ["red"]),
                     ("green_002.png", "green", []), ("red_003.png", "red", [])]
    assert s.progress()["last_pick"] == "queue order"
