"""The labelling server's API in-process (FastAPI TestClient): token, answers, errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sightwise.label.pool import read_pool
from sightwise.label.session import LabelSession
from sightwise.label.store import LabelStore, final_labels, read_answers
from sightwise.serve.label_app import create_label_app

TOKEN = "label-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(pool_dir, tmp_path):
    (pool_dir / "zzz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    s = LabelSession(read_pool(pool_dir), LabelStore(tmp_path / "labels.csv"),
                     ["red", "green", "blue"], order="random", log=lambda m: None)
    with TestClient(create_label_app(s, token=TOKEN), base_url="http://127.0.0.1") as c:
        c.session_obj = s
        yield c
    s.store.close()


def test_every_api_route_needs_the_token_but_the_page_does_not(client):
    assert client.get("/").status_code == 200
    assert "label.js" in client.get("/").text
    assert client.get("/static/label.js").status_code == 200
    for method, path in (("get", "/v1/label/progress"), ("post", "/v1/label/next"),
                         ("get", "/v1/label/image/0")):
        r = getattr(client, method)(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.get("/", headers=AUTH)
    assert r.headers["x-frame-options"] == "DENY" and "default-src 'self'" in r.headers[
        "content-security-policy"]


def test_next_answer_and_progress(client, tmp_path):
    item = client.post("/v1/label/next", json={"annotator": "ann"}, headers=AUTH).json()["item"]
    img = client.get(f"/v1/label/image/{item['id']}", headers=AUTH)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    r = client.post("/v1/label/answer", json={"annotator": "ann", "id": item["id"],
                                               "label": "green"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["answered"]["label"] == "green"
    assert r.json()["progress"]["per_class"]["green"] == 1
    assert final_labels(read_answers(tmp_path / "labels.csv")) == {f"pool/{item['path']}": "green"}
    state = client.get("/v1/label/state", params={"annotator": "ann"}, headers=AUTH).json()
    assert state["classes"] == ["red", "green", "blue"] and state["history"][0]["id"] == item["id"]


def test_bad_requests_get_a_4xx_and_change_nothing(client, tmp_path):
    item = client.post("/v1/label/next", json={"annotator": "ann"}, headers=AUTH).json()["item"]
    cases = [
        ({"annotator": "ann", "id": item["id"], "label": "purple"}, 422, "unknown class"),
        ({"annotator": "ann", "id": 4096, "label": "red"}, 404, "not in the pool"),
        ({"annotator": "ann", "id": -1, "label": "red"}, 422, "id"),
        ({"annotator": "", "id": item["id"], "label": "red"}, 422, "annotator"),
    ]
    for body, status, text in cases:
        r = client.post("/v1/label/answer", json=body, headers=AUTH)
        assert r.status_code == status and text in r.json()["error"]["message"], r.text
    r = client.post("/v1/label/answer", content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/label/answer", content=b"x" * 100_000, headers=AUTH)
    assert r.status_code == 413
    assert client.get("/v1/label/image/4096", headers=AUTH).status_code == 404
    assert read_answers(tmp_path / "labels.csv") == []


def test_a_broken_image_is_a_422_and_leaves_the_queue(client):
    bad = client.session_obj.pool.index_of("zzz_broken.png")
    r = client.get(f"/v1/label/image/{bad}", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "broken_image"
    assert "zzz_broken.png" in r.json()["error"]["message"]
    progress = client.get("/v1/label/progress", headers=AUTH).json()
    assert progress["broken_paths"] == ["zzz_broken.png"] and progress["queued"] == 12


def test_a_foreign_host_header_is_refused(client):
    """DNS rebinding: the page is answered only under loopback names (as `sightwise serve`)."""
    r = client.get("/", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and r.json()["error"]["code"]
