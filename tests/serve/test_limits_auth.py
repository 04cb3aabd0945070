"""Limits, input validation and the token gate, through the app and on their own."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sw_serve_helpers import TOKEN, app_for, client_for, encode, files

from sightwise.core import ModelRefError, parse_model_ref
from sightwise.errors import SightwiseError
from sightwise.serve.auth import load_token, token_matches
from sightwise.serve.runner import serve_main
from sightwise.serve.schemas import ApiError
from sightwise.serve.settings import MIB, ServeSettings
from sightwise.serve.uploads import decode_upload

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@pytest.fixture(scope="module")
def client(served_bundle):
    app = app_for(served_bundle, token=TOKEN, max_body_mb=1, max_images=4,
                  max_pixels=512 * 512)
    assert app.state.sw.settings.max_parts == 32
    with client_for(app) as c:
        yield c


def _error(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code, body


@pytest.mark.parametrize("ref", [
    "../etc@production", "..@production", "a/../../b", "/abs@prod", "name@", "@prod", "name",
    "na me@prod", "name@prod\x00", "näme@prod", "name@prod/../x", "name/0", "name/-1",
    "name/1.5", "name@pro:d", "C:\\x@prod", "name@@prod", ".hidden@prod", "name/01", "",
    "a" * 200 + "@prod", "name@prod\n", "name%2F..@prod",
])
def test_bad_model_references_are_refused(ref):
    # The one grammar of sightwise.core, shared with the registry (#26 finding 8).
    with pytest.raises(ModelRefError, match="invalid (model reference|model name|version|alias)"):
        parse_model_ref(ref)


@pytest.mark.parametrize("ref,want", [
    ("parts-qc@production", ("parts-qc", "production", None)),
    ("Parts.QC_2@staging", ("Parts.QC_2", "staging", None)),
    ("m/12", ("m", None, 12)),
])
def test_good_model_references_parse(ref, want):
    assert parse_model_ref(ref) == want


def test_serve_main_refuses_a_bad_reference_before_touching_the_registry(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sightwise.registry.resolve", None)  # import would fail
    with pytest.raises(ModelRefError, match="invalid model reference"):
        serve_main(model="../../etc/passwd@production", port=1)
    with pytest.raises(ValueError, match="exactly one"):
        serve_main()


def test_require_token_needs_a_token(served_bundle, monkeypatch):
    monkeypatch.delenv("SIGHTWISE_TOKEN", raising=False)
    with pytest.raises(SightwiseError, match="needs a token"):
        serve_main(bundle=str(served_bundle), require_token=True)
    with pytest.raises(ValueError, match="needs a token"):
        app_for(served_bundle, require_token=True)


def test_token_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGHTWISE_TOKEN", " from-env-0123456789 ")
    assert load_token() == "from-env-0123456789"
    f = tmp_path / "token"
    f.write_text("from-file-0123456789\n")
    assert load_token(token_file=f) == "from-file-0123456789"
    f.write_text("\n")
    with pytest.raises(SightwiseError, match="empty"):
        load_token(token_file=f)
    with pytest.raises(SightwiseError, match="cannot read"):
        load_token(token_file=tmp_path / "missing")
    monkeypatch.delenv("SIGHTWISE_TOKEN")
    assert load_token() is None


def test_token_comparison():
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert token_matches(f"bearer {TOKEN}", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ",
                   f"Bearer {TOKEN[:-1]}", "Bearer \u00e9"):
        assert not token_matches(header, TOKEN), header


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", ["/v1/admin/reload", "/v1/admin", "/v1/admin/anything/else"])
def test_admin_routes_need_the_token_for_every_method(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Basic {TOKEN}"}):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, headers)
        assert r.headers["www-authenticate"].startswith("Bearer")
        if method != "HEAD":
            _error(r, 401, "unauthorized")
    # With the token, the route itself answers (405 for other methods, 404 for no route).
    r = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code != 401


def test_admin_is_disabled_without_a_configured_token(served_bundle):
    with client_for(app_for(served_bundle)) as c:
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer anything"})
        _error(r, 401, "unauthorized")
        assert "SIGHTWISE_TOKEN" in r.json()["error"]["message"]


def test_require_token_protects_prediction_but_not_the_probes(served_bundle, sample_images):
    with client_for(app_for(served_bundle, token=TOKEN, require_token=True)) as c:
        _error(c.post("/v1/predict", files=files(sample_images[0])), 401, "unauthorized")
        _error(c.get("/v1/model"), 401)
        ok = c.post("/v1/predict", files=files(sample_images[0]),
                    headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/", "/docs"):
            assert c.get(path).status_code == 200, path


def test_oversized_bodies_get_413_declared_or_streamed(client, sample_images):
    big = b"\0" * (MIB + 1)
    r = client.post("/v1/predict", files=files(("big.png", big)))
    _error(r, 413, "payload_too_large")

    def chunks():  # no Content-Length: only the streaming count can stop it
        for _ in range(40):
            yield b"x" * 65536

    r = client.post("/v1/predict", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=b"})
    _error(r, 413, "payload_too_large")
    _error(client.post("/v1/predict", content=b"x", headers={"content-length": "abc"}), 400)


def test_too_many_parts_or_images_are_refused(client, sample_images):
    _error(client.post("/v1/predict", files=files(*[sample_images[0]] * 5)), 413,
           "too_many_images")
    parts = [("other", (None, "x"))] * 33
    _error(client.post("/v1/predict", files=parts), 413, "too_many_parts")


def test_ten_thousand_parts_are_refused_fast(client):
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
                    b"x\r\n" for _ in range(10_000)) + b"--b--\r\n"
    assert len(body) < MIB
    r = client.post("/v1/predict", content=body,
                    headers={"content-type": "multipart/form-data; boundary=b"})
    _error(r, 413)
    assert r.json()["error"]["code"] in ("too_many_images", "too_many_parts")


@pytest.mark.parametrize("headers,body,status,code", [
    ({"content-type": "application/json"}, b"{}", 415, "unsupported_media_type"),
    ({"content-type": "image/png"}, b"\x89PNG", 415, "unsupported_media_type"),
    ({"content-type": "text/plain"}, b"x", 415, "unsupported_media_type"),
    ({}, b"", 400, "no_image"),
    ({}, b"not an image", 415, "unsupported_media_type"),
    ({"content-type": "multipart/form-data"}, b"x", 400, "bad_multipart"),
    ({"content-type": "multipart/form-data; boundary=b"}, b"", 400, "bad_multipart"),
    ({"content-type": "multipart/form-data; boundary=b"}, b"--b--\r\n", 400, None),
    ({"content-type": "multipart/form-data; boundary=b"},
     b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc', 400, "bad_multipart"),
    ({"content-type": "multipart/form-data; boundary=b"},
     b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nabc\r\n--b--\r\n', 400,
     "no_image"),
    ({"content-type": "multipart/form-data; boundary=" + "b" * 100}, b"x", 400, "bad_multipart"),
])
def test_malformed_requests_get_a_json_4xx(client, headers, body, status, code):
    _error(client.post("/v1/predict", content=body, headers=headers), status, code)


def test_image_checks(client):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8))
    _error(client.post("/v1/predict", files=files(("a.gif", encode(img, "GIF")))), 415,
           "unsupported_media_type")
    _error(client.post("/v1/predict", files=files(("empty.png", b""))), 422, "invalid_image")
    png = encode(img, "PNG")
    _error(client.post("/v1/predict", files=files(("cut.png", png[: len(png) // 2]))), 422,
           "invalid_image")
    bomb = encode(Image.new("L", (1024, 1024)), "PNG")  # tiny file, 1 MP > the 0.26 MP limit
    assert len(bomb) < 10_000
    _error(client.post("/v1/predict", files=files(("bomb.png", bomb))), 413, "too_many_pixels")
    for fmt in ("JPEG", "BMP", "TIFF", "WEBP"):
        r = client.post("/v1/predict", files=files((f"a.{fmt}", encode(img, fmt))))
        assert r.status_code == 200, (fmt, r.text)
    _error(client.get("/v1/predict"), 405, "method_not_allowed")
    _error(client.post("/v1/predict?top_k=0", files=files(("a.png", png))), 422,
           "invalid_parameter")


def test_decode_upload_turns_every_failure_into_an_api_error():
    for data in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"BM" + b"\xff" * 60,
                 b"II*\x00" + b"\x00" * 40, b"GIF89a" + b"\x00" * 20):
        with pytest.raises(ApiError) as info:
            decode_upload(data, 1000)
        assert 400 <= info.value.status < 500


@pytest.mark.parametrize("bad", [{"max_images": 0}, {"request_timeout_s": 0},
                                 {"header_timeout_s": -1}, {"max_connections_per_client": 0},
                                 {"max_pixels": 100, "max_pixels_in_flight": 99},
                                 {"batch_window_ms": -1}, {"workers": 0}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        ServeSettings(**bad)


def test_settings_defaults_and_derived_values():
    from sightwise.data.decode import DEFAULT_MAX_PIXELS

    s = ServeSettings()
    assert s.max_pixels == DEFAULT_MAX_PIXELS  # repeated in settings.py to stay light
    assert s.header_timeout_s <= 30  # the contract of #26
    assert s.max_body_bytes == 16 * MIB and s.pixels_in_flight == 2 * s.max_pixels
    assert ServeSettings(max_images=40).max_parts == 80
    assert ServeSettings(allowed_hosts="a.example, b.example").allowed_hosts == (
        "a.example", "b.example")


def test_logs_carry_no_image_bytes_or_exif(client, caplog):
    """Even at DEBUG, nothing logged while answering good and bad uploads contains upload
    content: neither pixel bytes nor EXIF text."""
    marker = "SECRET-EXIF-MARKER-42"
    exif = Image.Exif()
    exif[0x010E] = marker  # ImageDescription
    img = Image.fromarray(np.full((32, 32, 3), 7, np.uint8))
    jpeg = encode(img, "JPEG", exif=exif.tobytes())
    assert marker.encode() in jpeg
    with caplog.at_level("DEBUG"):
        assert client.post("/v1/predict", files=files(("a.jpg", jpeg))).status_code == 200
        client.post("/v1/predict", files=files(("b.jpg", jpeg[:200] + marker.encode())))
        client.post("/v1/predict", content=b"--b\r\n" + marker.encode(),
                    headers={"content-type": "multipart/form-data; boundary=b"})
        client.post("/v1/predict", content=b"\xdc\xdd" + marker.encode(),
                    headers={"content-type": "multipart/form-data; boundary=b"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]
    assert marker not in text and "\\x" not in text


def test_an_answer_later_than_the_timeout_is_a_503_and_its_work_is_dropped(served_bundle,
                                                                           sample_images):
    # The batch window (60 s) is far longer than the deadline (0.5 s): the answer can only
    # be the deadline's.
    app = app_for(served_bundle, batch_window_ms=60_000, max_batch=64, request_timeout_s=0.5)
    with client_for(app) as c:
        r = c.post("/v1/predict", files=files(sample_images[0]))
        _error(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
    # Shutdown woke the worker: the timed-out item was skipped, never run.
    assert app.state.sw.metrics.registry.get_sample_value("sightwise_batch_size_count") == 0


@pytest.mark.parametrize("path", ["/v1/admin/reload/", "/v1//admin/reload", "/V1/admin/reload",
                                  "/v1/admin/../admin/reload", "/v1/admin%2freload",
                                  "/v1/./admin/reload", "//v1/admin/reload"])
def test_path_tricks_never_reach_an_admin_route_without_the_token(client, path):
    r = client.post(path)
    assert r.status_code in (401, 404, 405), (path, r.status_code)
    assert r.status_code != 200
