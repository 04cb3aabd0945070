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


# ---------------------------------------------------------------- comparable by construction
# Two bundles whose ONNX graphs are built by hand (average colour -> a 3x3 linear head), so
# every prediction, accuracy and macro-F1 below can be worked out on paper: the fixture's
# classes a, b, c are red, green and blue images (normalised mean channels about
# (0.29, -0.77, -0.77), (-0.77, 0.18, -0.65), (-0.71, -0.59, 0.35)). GOOD reads the
# dominant channel; BAD scores "a" as red + blue and never says "c" (bias -5), so it
# calls the blue images "a".

GOOD = ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
BAD = ([[1, 0, 1], [0, 1, 0], [0, 0, 1]], [0, 0, -5])


def _graph(weights_bias) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = weights_bias
    w = numpy_helper.from_array(np.asarray(weights, np.float32).T.copy(), "Wt")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "b")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "Wt"], ["scores"]),
             helper.make_node("Add", ["scores", "b"], ["logits"]),
             helper.make_node("Identity", ["image"], ["features"])]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("logits", "embedding", "features")], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _colour_bundle(path, data, weights, splits: dict, *, relabel: dict | None = None):
    """A bundle over `data` (a/b/c x 10 images) whose manifest puts image i of each class
    in splits[i]; `relabel` {(class, i): label} writes another label for that row."""
    from sightwise.bundle import write_bundle_meta
    from sightwise.core import sha256_path

    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(_graph(weights))
    rows = ["path,label,split,sha256"]
    for c in "abc":
        for i, split in splits.items():
            f = data / c / f"{c}_{i:03d}.png"
            label = (relabel or {}).get((c, i), c)
            rows.append(f"{c}/{f.name},{label},{split},{sha256_path(f)}")
    (path / "manifest.csv").write_text("\n".join(rows) + "\n")
    meta = {"task": "classification", "classes": ["a", "b", "c"],
            "model": {"name": "colour", "num_classes": 3},
            "preprocessing": {"size": 16, "resize": "stretch", "interpolation": "bilinear",
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "metrics": {"test": {"n": 6, "accuracy": 1.0, "macro_f1": 1.0}},
            "data": {"manifest_sha256": sha256_path(path / "manifest.csv"), "root": str(data)},
            "export": {"parity_passed": True, "fp32_passed": True, "int8_passed": None,
                       "forced": False, "failed_checks": []}}
    write_bundle_meta(path, meta)
    return path


SPLIT_1 = {**{i: "train" for i in range(6)}, 6: "val", 7: "val", 8: "test", 9: "test"}
SPLIT_2 = {**{i: "train" for i in range(4)}, 4: "val", 5: "val",
           **{i: "test" for i in range(6, 10)}}


@pytest.fixture
def colours(tmp_path, image_folder_factory):
    return image_folder_factory(tmp_path / "data", {"a": 10, "b": 10, "c": 10}, size=16)


def test_retrained_on_another_split_is_compared_on_images_neither_trained_on(home, tmp_path,
                                                                             colours):
    """v1 tested on images 8-9 of each class, v2 (BAD) on 6-9 but trained/validated on 0-5;
    v1 saw 6-7 in validation, so the common ground is images 8-9: n = 6. On them GOOD is
    right 6/6; BAD calls the two blue ones "a": accuracy 4/6, macro-F1 (4/6 + 1 + 0) / 3."""
    from sightwise.bundle import load_bundle
    from sightwise.registry.compare import compare_versions

    register_bundle(_colour_bundle(tmp_path / "v1", colours, GOOD, SPLIT_1), "m")
    register_bundle(_colour_bundle(tmp_path / "v2", colours, BAD, SPLIT_2), "m")
    promote("m", 1)
    with pytest.raises(PromotionRefused) as err:
        promote("m", 2)
    assert "on 6 test images neither version trained on" in str(err.value)
    assert "macro-F1 0.5556 is 0.4444 below production v1's 1.0000" in str(err.value)
    comp = compare_versions(load_bundle(tmp_path / "v2"), load_bundle(tmp_path / "v1"))
    assert comp["method"] == "common-images" and comp["n"] == 6
    assert comp["candidate"]["accuracy"] == pytest.approx(4 / 6)
    assert comp["candidate"]["macro_f1"] == pytest.approx((4 / 6 + 1 + 0) / 3)
    assert comp["holder"] == {"accuracy": 1.0, "macro_f1": 1.0}
    lo, hi = comp["difference"]["accuracy_ci"]
    assert lo <= -2 / 6 <= hi and hi <= 0  # BAD is never better on any resample
    assert comp["excluded"]["seen_in_training"] == 6  # images 6-7 of v2's test split
    # The other way round the better model is promoted, with its n in the record.
    res = promote("m", 1, alias="staging", against="production")
    assert res["action"] == "none" or res["to"] == 1


def test_the_better_retrain_is_promoted_without_force(home, tmp_path, colours):
    register_bundle(_colour_bundle(tmp_path / "v1", colours, BAD, SPLIT_1), "m")
    register_bundle(_colour_bundle(tmp_path / "v2", colours, GOOD, SPLIT_2), "m")
    promote("m", 1)
    entry = promote("m", 2)
    assert entry["to"] == 2 and not entry["forced"]
    check = entry["checks"][1]
    assert check["check"] == "macro-f1" and check["comparison"]["n"] == 6
    assert "1.0000 vs production v1's 0.5556 on 6 test images" in check["message"]
    cached = list((home / "comparisons").glob("*.json"))
    assert len(cached) == 1  # computed once (before the lock), read again under it


def test_labels_that_disagree_and_changed_files_are_left_out(home, tmp_path, colours):
    """Image 8 of class b is labelled "c" by v2: the two disagree about the truth, so it is
    not evaluated; image 9 of class a is rewritten after training: not the tested image."""
    from sightwise.bundle import load_bundle
    from sightwise.registry.compare import compare_versions

    v1 = _colour_bundle(tmp_path / "v1", colours, GOOD, SPLIT_1)
    v2 = _colour_bundle(tmp_path / "v2", colours, GOOD, SPLIT_2, relabel={("b", 8): "c"})
    (colours / "a" / "a_009.png").write_bytes((colours / "a" / "a_000.png").read_bytes())
    comp = compare_versions(load_bundle(v2), load_bundle(v1))
    assert comp["n"] == 4
    assert comp["excluded"]["label_disagreements"] == 1 and comp["excluded"]["unreadable"] == 1


def test_not_comparable_is_the_last_resort_and_says_why(home, tmp_path, colours):
    from sightwise.bundle import load_bundle
    from sightwise.registry.compare import compare_versions

    every = {i: "train" for i in range(10)}  # v2 trains on v1's test images, and v1 on v2's
    v1 = _colour_bundle(tmp_path / "v1", colours, GOOD, SPLIT_1)
    v2 = _colour_bundle(tmp_path / "v2", colours, GOOD, {**every, 0: "test"})
    comp = compare_versions(load_bundle(v2), load_bundle(v1))
    assert comp["method"] == "not-comparable"
    assert "no test image of either version lies outside both" in comp["reason"]


def test_paired_bootstrap_against_scikit_learn():
    """Point estimates equal scikit-learn's; each resample's macro-F1 difference equals
    scikit-learn's on the explicitly resampled arrays (same seed, same draws)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from sightwise.registry.compare import macro_f1_from_counts, paired_bootstrap

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 60)
    a = np.where(rng.random(60) < 0.8, y, rng.integers(0, 4, 60))
    b = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))  # predicts a 5th class too
    res = paired_bootstrap(y, a, b, 5, n_boot=300, seed=7)
    assert res["candidate"]["accuracy"] == pytest.approx(accuracy_score(y, a))
    assert res["candidate"]["macro_f1"] == pytest.approx(f1_score(y, a, average="macro"))
    assert res["holder"]["macro_f1"] == pytest.approx(f1_score(y, b, average="macro", zero_division=0))
    w = np.random.default_rng(7).multinomial(60, np.full(60, 1 / 60), size=250)[0]
    idx = np.repeat(np.arange(60), w)
    eye = np.eye(5)
    tp_a = w @ (eye[y] * eye[a])
    mine = macro_f1_from_counts(tp_a, w @ eye[a] - tp_a, w @ eye[y] - tp_a)
    assert mine == pytest.approx(f1_score(y[idx], a[idx], average="macro", zero_division=0))
    lo, hi = res["difference"]["macro_f1_ci"]
    assert lo < res["difference"]["macro_f1"] < hi


def test_require_shadow_counts_the_candidates_live_predictions(registered):
    from sightwise.shadowlog import ShadowWriter, shadow_record, shadow_summary

    promote("m", 1)
    with ShadowWriter("m") as w:
        for i in range(5):
            w.append(shadow_record(model="m", primary_version=1, primary_label="a",
                                   shadow_version=2, shadow_label="a" if i < 4 else "b",
                                   true_label="b" if i == 4 else None))
    summary = shadow_summary("m", 2)
    with pytest.raises(PromotionRefused, match=r"5 shadow prediction\(s\) of v2 logged \(10 required\), "
                                               r"agreeing with the primary model on 80.0%"):
        promote("m", 2, require_shadow=10, shadow=summary)
    entry = promote("m", 2, require_shadow=5, shadow=summary)
    msg = entry["checks"][-1]["message"]
    assert entry["to"] == 2 and "on 1 labelled request(s) v2 100.0% vs primary 0.0%" in msg


def test_require_shadow_on_the_command_line(registered):
    from typer.testing import CliRunner

    from sightwise.registry.cli import models_app
    from sightwise.shadowlog import ShadowWriter, shadow_record

    runner = CliRunner()
    assert runner.invoke(models_app, ["promote", "m", "1"]).exit_code == 0
    res = runner.invoke(models_app, ["promote", "m", "2", "--require-shadow", "3"])
    assert res.exit_code == 2 and "0 shadow prediction(s) of v2 logged (3 required)" in res.stderr
    with ShadowWriter("m") as w:
        for _ in range(3):
            w.append(shadow_record(model="m", primary_version=1, primary_label="a",
                                   shadow_version=2, shadow_label="a"))
    res = runner.invoke(models_app, ["promote", "m", "2", "--require-shadow", "3"])
    assert res.exit_code == 0, res.stderr
    assert "m@production: v1 -> v2" in res.stdout
    assert "agreeing with the primary model on 100.0%" in res.stdout
