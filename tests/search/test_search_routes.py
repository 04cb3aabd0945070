"""POST /v1/search through TestClient, on an app made by create_app plus
add_search_routes (the wiring the lead adds to create_app)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sightwise.serve.app import create_app
from sightwise.serve.search_routes import add_search_routes


@pytest.fixture(scope="module")
def client(search_bundle, texture_index):
    app = create_app(search_bundle, threads=1, workers=1)
    add_search_routes(app, texture_index, threads=1)
    with TestClient(app) as c:
        yield c


def test_search_answers_ranked_matches(client, texture_data):
    img = sorted(texture_data.rglob("*.png"))[30]
    r = client.post("/v1/search?k=4", files={"file": (img.name, img.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == img.name and body["index"]["count"] == 144
    m = body["matches"]
    assert [x["rank"] for x in m] == [1, 2, 3, 4]
    assert m[0]["path"] == str(img.resolve()) and m[0]["label"] == img.parent.name
    assert m[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_search_errors_are_4xx(client):
    r = client.post("/v1/search", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code in (415, 422) and "error" in r.json()
    assert client.post("/v1/search", content=b"x").status_code == 415
    r = client.post("/v1/search?k=0", files={"file": ("x.png", b"x", "image/png")})
    assert r.status_code == 422


def test_predict_still_works(client, texture_data):
    img = sorted(texture_data.rglob("*.png"))[0]
    r = client.post("/v1/predict", files={"file": (img.name, img.read_bytes(), "image/png")})
    assert r.status_code == 200
