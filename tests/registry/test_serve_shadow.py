"""`serve --model NAME@production --shadow NAME@staging`: the candidate answers a copy of the
traffic off the request path; the primary's answers are unchanged; both go to the shadow
log, which `models promote --require-shadow N` reads; a failing shadow never fails a request."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sightwise.registry.promote import promote
from sightwise.registry.versions import register_bundle
from sightwise.serve.app import create_app
from sightwise.serve.settings import ServeSettings
from sightwise.shadowlog import read_shadow, shadow_summary


@pytest.fixture
def staged(home, two_runs):
    data, run0, run1 = two_runs
    register_bundle(run0, "parts")
    register_bundle(run1, "parts")
    promote("parts", 1)
    promote("parts", 2, alias="staging", force=True)
    return data


def _uploads(data, n=6):
    files = sorted(p for p in (data / "test").rglob("*.png"))[:n]
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in files]


def _predict(settings: ServeSettings, uploads) -> list[dict]:
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:  # leaving drains observers
        answer = client.post("/v1/predict", files=uploads)
        assert answer.status_code == 200, answer.text
        return answer.json()["results"]


def test_the_shadow_answers_a_copy_and_never_changes_the_primary(staged):
    uploads = _uploads(staged)
    plain = _predict(ServeSettings(model="parts@production", log=False), uploads)
    shadowed = _predict(ServeSettings(model="parts@production", shadow="parts@staging",
                                      log=False), uploads)
    for a, b in zip(plain, shadowed, strict=True):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert a["predictions"][0]["probability"] == pytest.approx(b["predictions"][0]["probability"])
    records = list(read_shadow("parts"))
    assert len(records) == len(uploads)
    assert {(r["primary"]["version"], r["shadow"]["version"]) for r in records} == {(1, 2)}
    assert [r["primary"]["label"] for r in records] == [p["predictions"][0]["label"]
                                                         for p in plain]
    summary = shadow_summary("parts", 2)
    assert summary["n"] == len(uploads) and 0.0 <= summary["agreement"] <= 1.0


def test_after_promotion_the_shadow_does_not_shadow_itself(staged):
    """Once production and staging name the same version, nothing is recorded: a record of
    a version against itself would double-count its images."""
    promote("parts", 2, force=True)  # staging's version becomes production
    _predict(ServeSettings(model="parts@production", shadow="parts@staging", log=False),
             _uploads(staged, n=3))
    assert list(read_shadow("parts")) == []


def test_a_failing_shadow_never_fails_a_request(staged, monkeypatch):
    from sightwise.serve import shadow as shadow_mod

    def broken(self, image):
        raise RuntimeError("the candidate's graph fell over")

    monkeypatch.setattr(shadow_mod.ShadowObserver, "_outputs", broken)
    uploads = _uploads(staged, n=3)
    results = _predict(ServeSettings(model="parts@production", shadow="parts@staging",
                                     log=False), uploads)
    assert len(results) == 3
    records = list(read_shadow("parts"))
    assert len(records) == 3 and all("fell over" in r["shadow"]["error"] for r in records)


def test_shadow_needs_a_registry_primary_and_a_valid_reference(tmp_path):
    with pytest.raises(ValueError, match="--shadow compares registry versions"):
        ServeSettings(bundle=str(tmp_path), shadow="parts@staging")
