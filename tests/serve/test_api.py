"""The HTTP contract, checked against the runtime's own answers for the same images.

Reference: `sightwise.runtime.Predictor` on the decoded upload (what `sightwise predict`
and the edge package compute); the server must answer the same numbers through batching.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sw_serve_helpers import app_for, client_for, files

from sightwise.data.decode import decode_image
from sightwise.errors import BundleError
from sightwise.heatmap import translucent_overlay, with_legend
from sightwise.runtime import Predictor
from sightwise.serve.pipeline import thumbnail
from sightwise.serve.swap import local_version


@pytest.fixture(scope="module")
def app(served_bundle):
    return app_for(served_bundle, name="parts", version=7, max_batch=8, batch_window_ms=5)


@pytest.fixture(scope="module")
def client(app):
    with client_for(app) as c:
        yield c


@pytest.fixture(scope="module")
def reference(served_bundle):
    return Predictor(served_bundle)


def test_predict_matches_the_runtime(client, reference, sample_images):
    r = client.post("/v1/predict?top_k=3", files=files(*sample_images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "parts", "version": 7}
    assert len(body["results"]) == len(sample_images)
    probs = reference.probabilities([decode_image(data) for _, data in sample_images])
    for (name, _), res, p in zip(sample_images, body["results"], probs, strict=True):
        assert res["filename"] == name and res["ms"] >= 0
        order = np.argsort(-p, kind="stable")[:3]
        assert [x["label"] for x in res["predictions"]] == [reference.classes[i] for i in order]
        np.testing.assert_allclose([x["probability"] for x in res["predictions"]], p[order],
                                   atol=1e-5)


def test_concurrent_requests_are_batched_and_still_match(client, reference, sample_images):
    """16 concurrent single-image requests: answers equal the unbatched reference, and the
    batch-size histogram shows batches of more than one image."""
    def one(i):
        name, data = sample_images[i % len(sample_images)]
        return i, client.post("/v1/predict?top_k=1", files=files((name, data))).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(32)))
    labels = [reference.predict_images([decode_image(d)], top_k=1)[0].label
              for _, d in sample_images]
    for i, body in answers:
        assert body["results"][0]["predictions"][0]["label"] == labels[i % len(labels)]
    batches = _samples(client, "sightwise_batch_size")
    count, total = batches["sightwise_batch_size_count"], batches["sightwise_batch_size_sum"]
    assert total / count > 1.0, "no two requests were ever batched together"


def test_explain_json_matches_the_runtime_cam(client, reference, sample_images):
    name, data = sample_images[1]
    r = client.post("/v1/explain?format=json", files=files((name, data)))
    assert r.status_code == 200, r.text
    body = r.json()
    cam, c, probs = reference.cam(decode_image(data))
    assert body["label"] == reference.classes[c] and body["class_index"] == c
    assert body["probability"] == pytest.approx(float(probs[c]), abs=1e-5)
    np.testing.assert_allclose(np.array(body["heatmap"]), cam, atol=1e-3)
    other = reference.classes[(c + 1) % len(reference.classes)]
    r = client.post(f"/v1/explain?format=json&class={other}", files=files((name, data)))
    assert r.json()["label"] == other
    np.testing.assert_allclose(np.array(r.json()["heatmap"]),
                               reference.cam(decode_image(data), (c + 1) % len(probs))[0],
                               atol=1e-3)


def test_explain_png_is_the_runtime_cam_drawn_translucent_with_a_legend(client, reference,
                                                                       sample_images):
    """The PNG is the runtime's CAM over the image (cold regions untouched, hot ones
    tinted) above a legend strip whose colours run blue -> red, left to right."""
    name, data = sample_images[2]
    r = client.post("/v1/explain", files=files((name, data)))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = decode_image(data)
    cam, c, _ = reference.cam(img)
    assert r.headers["x-sightwise-label"] == reference.classes[c]
    assert r.headers["x-sightwise-version"] == "7"
    got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.int16)
    caption = (f"Where the model looked for {reference.classes[c]}" if cam.any()
               else f"No region of the image speaks for {reference.classes[c]}")
    want = np.asarray(with_legend(translucent_overlay(img, cam), caption, "less", "more"),
                      np.int16)
    assert got.shape == want.shape and np.abs(got - want).max() <= 2
    # The figure part, at the coldest point of the map, is the image itself.
    big = img.resize((got.shape[1], round(img.height * got.shape[1] / img.width)))
    legend_rows = got.shape[0] - big.height
    assert legend_rows > 10
    strip = got[big.height:]
    bar_row = strip[-legend_rows // 3]  # a row through the colour bar
    coloured = [px for px in bar_row if not (px == 255).all() and px.std() > 20]
    assert coloured[0][2] > coloured[0][0] and coloured[-1][0] > coloured[-1][2]  # blue..red


def test_explain_refuses_an_unknown_class_and_two_images(client, sample_images):
    r = client.post("/v1/explain?class=nope", files=files(sample_images[0]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_class"
    r = client.post("/v1/explain", files=files(*sample_images[:2]))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_images"
    r = client.post("/v1/explain?format=gif", files=files(sample_images[0]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


def test_model_info_health_and_readiness(client, served_bundle, reference):
    info = client.get("/v1/model").json()
    assert info["name"] == "parts" and info["version"] == 7 and info["label"] == "parts v7"
    assert info["classes"] == reference.classes
    assert info["metrics"] == reference.bundle.meta.raw["metrics"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["loaded_at"])
    assert info["last_swap_error"] is None
    assert client.get("/healthz").json() == {"status": "ok"}  # no process id (#26)
    assert client.get("/readyz").json() == {"status": "ready"}


def test_metrics_are_prometheus_text_on_a_per_app_registry(client, served_bundle):
    client.post("/v1/predict", files=files(("x.png", b"not an image")))
    samples = _samples(client)
    assert samples['sightwise_model_info{name="parts",version="7"}'] == 1.0
    assert samples['sightwise_http_requests_total{method="POST",route="/v1/predict",status="415"}'] >= 1
    assert "sightwise_queue_depth" in samples
    assert any(k.startswith("sightwise_http_request_duration_seconds_bucket") for k in samples)
    # A second app in the same process has its own counters (no global registry clash).
    with client_for(app_for(served_bundle, name="other")) as c2:
        assert _samples(c2).get(
            'sightwise_http_requests_total{method="POST",route="/v1/predict",status="415"}') is None


def test_default_version_names_the_bundle_contents_and_the_label_reads_well(served_bundle):
    with client_for(app_for(served_bundle)) as c:
        model = c.get("/v1/model").json()
    assert model["version"] == local_version(served_bundle)
    assert model["name"] == served_bundle.name
    meta = Predictor(served_bundle).bundle.meta
    created = meta.created[:16].replace("T", " ")
    assert model["label"] == f"{served_bundle.name} ({meta.model['name']}, exported {created} UTC)"
    assert "local-" not in model["label"]


def test_a_run_folder_serves_its_bundle(served_bundle, tmp_path):
    """`serve --bundle RUN_DIR` works as `predict RUN_DIR` does (#25)."""
    import shutil

    run = tmp_path / "my-run"
    shutil.copytree(served_bundle, run / "bundle")
    with client_for(app_for(run)) as c:
        model = c.get("/v1/model").json()
    assert model["name"] == "my-run" and model["version"] == local_version(served_bundle)
    with pytest.raises(BundleError, match="not a bundle .* nor a run folder"):
        app_for(tmp_path)
    with pytest.raises(BundleError, match="no such folder"):
        app_for(tmp_path / "missing")


def test_a_bad_bundle_fails_at_creation(versions):
    with pytest.raises(BundleError, match="sha256"):
        app_for(versions[99])


def test_page_docs_and_openapi_are_self_hosted(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/v1/predict" in docs.text
    for text in (page.text, docs.text, client.get("/static/app.js").text):
        assert not re.search(r"(src|href)=\"(https?:)?//", text), "external resource"
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/v1/admin/reload", "/v1/admin/status",
            "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)


def _samples(client, prefix: str = "") -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name.startswith(prefix):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_a_large_image_gets_an_overlay_of_bounded_size(client, reference):
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), np.uint8))
    buf = io.BytesIO()
    big.save(buf, "JPEG")
    r = client.post("/v1/explain", files=files(("big.jpg", buf.getvalue())))
    assert r.status_code == 200
    width, height = Image.open(io.BytesIO(r.content)).size
    assert thumbnail(big).size == (1024, 768)
    assert width == 1024 and 768 < height < 768 + 100  # the image, then its legend strip
    pred = client.post("/v1/predict?top_k=1", files=files(("big.jpg", buf.getvalue()))).json()
    want = reference.predict_images([decode_image(buf.getvalue())], top_k=1)[0]
    assert pred["results"][0]["predictions"][0]["label"] == want.label
