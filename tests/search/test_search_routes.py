"""POST /v1/search through TestClient, on an app made by create_app with an index in its
settings (what `sightwise serve --index` builds)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sightwise.serve.app import create_app
from sightwise.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def client(search_bundle, texture_index):
    app = create_app(ServeSettings(bundle=str(search_bundle), index=str(texture_index),
                                   threads=1, workers=1))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


def test_search_answers_ranked_matches(client, texture_data):
    img = sorted(texture_data.rglob("*.png"))[30]
    r = client.post("/v1/search?k=4", files={"file": (img.name, img.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == img.name and body["index"]["count"] == 144
    m = body["matches"]
    assert [x["rank"] for x in m] == [1, 2, 3, 4]
    # Paths relative to the indexed folder: the server's own folders stay private (#26).
    assert m[0]["path"] == img.relative_to(texture_data).as_posix()
    assert str(texture_data) not in r.text
    assert m[0]["label"] == img.parent.name
    assert m[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_search_errors_are_the_same_4xx_as_predict(client):
    for path in ("/v1/search", "/v1/predict"):
        r = client.post(path, files={"file": ("x.png", b"not an image", "image/png")})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert client.post(path, content=b"{}",
                           headers={"content-type": "application/json"}).status_code == 415
    r = client.post("/v1/search?k=0", files={"file": ("x.png", b"x", "image/png")})
    assert r.status_code == 422


def test_the_image_can_be_the_body_and_predict_still_works(client, texture_data):
    img = sorted(texture_data.rglob("*.png"))[0]
    r = client.post("/v1/search?k=1", content=img.read_bytes(),
                    headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["matches"][0]["label"] == img.parent.name
    r = client.post("/v1/predict", files={"file": (img.name, img.read_bytes(), "image/png")})
    assert r.status_code == 200
