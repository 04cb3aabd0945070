"""Gated promotion and rollback: refusals name the failed check and by how much; --force
overrides and is recorded; rollback undoes the last move."""

from __future__ import annotations

import pytest

from sightwise.registry.promote import (
    previous_holder,
    promote,
    read_history,
    rollback,
    settled_history,
)
from sightwise.registry.resolve import current_version
from sightwise.registry.store import PromotionRefused, RegistryError, mlflow_client
from sightwise.registry.versions import register_bundle


@pytest.fixture
def registered(home, make_bundle):
    """m v1 (F1 0.90), v2 (0.91), v3 (0.70: clearly worse), v4 (parity failed),
    v5 (never exported), v6 (other test data, 0.95)."""
    specs = [dict(macro_f1=0.90), dict(macro_f1=0.91), dict(macro_f1=0.70),
             dict(macro_f1=0.92, parity=False), dict(macro_f1=0.92, parity=None),
             dict(macro_f1=0.95, data_sha="b" * 64, manifest="path,label,split,sha256\n"
                  "x.png,a,test,0f\n")]
    for i, kw in enumerate(specs):
        register_bundle(make_bundle(f"b{i}", seed=i, **kw), "m")
    return home


def test_first_promotion_and_a_better_version(registered):
    first = promote("m", 1)
    assert (first["from"], first["to"], first["forced"]) == (None, 1, False)
    assert current_version("m")[0] == 1
    second = promote("m", 2)
    assert (second["from"], second["to"]) == (1, 2)
    assert [c["check"] for c in second["checks"]] == ["parity", "macro-f1"]


def test_within_tolerance_is_accepted(registered):
    promote("m", 2)
    promote("m", 1, tolerance=0.02)  # 0.01 below: inside 0.02
    assert current_version("m")[0] == 1


def test_worse_metrics_are_refused_with_the_numbers(registered):
    promote("m", 1)
    with pytest.raises(PromotionRefused) as err:
        promote("m", 3)
    msg = str(err.value)
    assert "macro-F1 0.7000 is 0.2000 below production v1's 0.9000" in msg
    assert "tolerance 0.01" in msg
    assert current_version("m")[0] == 1
    assert [e["to"] for e in read_history("m")] == [1]  # a refusal is not a move


def test_failed_or_missing_parity_is_refused(registered):
    with pytest.raises(PromotionRefused, match="v4 failed its export parity gate: fp32 top-1"):
        promote("m", 4)
    with pytest.raises(PromotionRefused, match="v5 has no export parity record"):
        promote("m", 5)
    assert current_version("m") is None


def test_different_test_data_is_refused_unless_forced(registered):
    promote("m", 1)
    with pytest.raises(PromotionRefused, match="test data differ"):
        promote("m", 6)
    entry = promote("m", 6, force=True, reason="new camera, new test set")
    assert entry["forced"] and "test data differ" in entry["overridden"][0]
    assert current_version("m")[0] == 6


def test_force_overrides_and_is_recorded(registered):
    promote("m", 1)
    entry = promote("m", 4, force=True, reason="hotfix", who="alice@line3")
    assert entry["forced"] is True
    assert any("parity" in o for o in entry["overridden"])
    last = read_history("m")[-1]
    assert (last["from"], last["to"], last["forced"], last["reason"], last["who"], last["state"]) \
        == (1, 4, True, "hotfix", "alice@line3", "done")


def test_force_without_failures_is_not_marked_forced(registered):
    assert promote("m", 1, force=True)["forced"] is False


def test_promoting_the_holder_is_a_no_op(registered):
    promote("m", 1)
    assert promote("m", 1)["action"] == "none"
    assert len(read_history("m")) == 1


def test_rollback_undoes_moves_in_order(registered):
    promote("m", 1)
    promote("m", 2)
    promote("m", 6, force=True)
    assert rollback("m", reason="bad canary")["to"] == 2
    assert rollback("m")["to"] == 1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback("m")
    assert current_version("m")[0] == 1
    moves = [(e["action"], e["from"], e["to"]) for e in read_history("m")]
    assert moves == [("promote", None, 1), ("promote", 1, 2), ("promote", 2, 6),
                     ("rollback", 6, 2), ("rollback", 2, 1)]


def test_aliases_are_independent(registered):
    promote("m", 1)
    promote("m", 2, alias="staging")
    assert current_version("m", "staging")[0] == 2 and current_version("m")[0] == 1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback("m", alias="staging")


def test_unknown_model_version_and_alias(registered):
    with pytest.raises(RegistryError, match="no registered model"):
        promote("nope", 1)
    with pytest.raises(RegistryError, match="has no version 99"):
        promote("m", 99)
    with pytest.raises(RegistryError, match="no version of m holds"):
        rollback("m")
    with pytest.raises(RegistryError, match="invalid alias"):
        promote("m", 1, alias="latest")


def test_pending_entries_settle_against_mlflow(registered):
    """A writer killed between writing its pending entry and moving the alias leaves an
    entry that never happened; killed after the move, one that did."""
    import json

    from sightwise.registry.promote import history_path

    promote("m", 1)
    client = mlflow_client()
    path = history_path("m")
    base = path.read_text()
    ghost = {"id": "g", "time": "t", "who": "w", "action": "promote", "alias": "production",
             "from": 1, "to": 2, "forced": False, "overridden": [], "reason": "",
             "state": "pending"}
    path.write_text(base + json.dumps(ghost) + "\n")
    assert settled_history(client, "m")[-1]["state"] == "pending"  # may still be in flight
    promote("m", 2)  # the next writer settles it under the lock
    states = [(e["to"], e["state"]) for e in read_history("m")]
    assert states == [(1, "done"), (2, "interrupted"), (2, "done")]
    client.set_registered_model_alias("m", "production", "1")  # moved, then killed
    path.write_text(path.read_text() + json.dumps({**ghost, "id": "h", "from": 2, "to": 1}) + "\n")
    assert settled_history(client, "m")[-1]["state"] == "done"


def test_previous_holder_replays_the_stack():
    def e(action, src, dst, state="done", alias="production"):
        return {"action": action, "from": src, "to": dst, "state": state, "alias": alias}

    hist = [e("promote", None, 1), e("promote", 1, 2), e("promote", 2, 3, state="interrupted"),
            e("promote", 2, 4), e("rollback", 4, 2), e("promote", 2, 5, alias="staging")]
    assert previous_holder(hist, "production", 2) == 1
    assert previous_holder(hist, "production", 4) is None  # not where the history says
    assert previous_holder([e("promote", 7, 8)], "production", 8) == 7  # set outside Sightwise


def test_same_test_split_under_another_manifest_is_comparable(home, make_bundle):
    """Moved data or re-drawn train/val change the manifest's sha256 but not the test
    images: the bundles' manifest.csv test rows decide."""
    register_bundle(make_bundle("a", macro_f1=0.9), "m")
    register_bundle(make_bundle("b", macro_f1=0.5, data_sha="c" * 64, seed=1), "m")
    promote("m", 1)
    with pytest.raises(PromotionRefused, match="0.4000 below"):
        promote("m", 2)
