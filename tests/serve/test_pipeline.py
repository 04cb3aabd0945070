"""One pipeline for every image route (#25 item 5): the same input gets the same status
code from /v1/predict, /v1/explain, /v1/search and /v1/inspect; the admission gate and the
request deadline cover all four; decoding is admitted by pixels, and a request's deadline
is not outlived by the rest of its images (#26 finding 10).

The slow decoder here is the real one behind an event the test holds, so "still
decoding" is a state the test controls, not a matter of this machine's speed.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from sw_serve_helpers import app_for, client_for, encode, files

import sightwise.serve.pipeline as pipeline_module

SURFACES = ["/v1/predict", "/v1/explain", "/v1/search", "/v1/inspect"]
RNG = np.random.default_rng(7)
PNG = encode(Image.fromarray(RNG.integers(0, 255, (40, 40, 3), np.uint8)), "PNG")
GIF = encode(Image.fromarray(RNG.integers(0, 255, (40, 40, 3), np.uint8)), "GIF")
BOMB = encode(Image.new("L", (1024, 1024)), "PNG")  # 1 MP in a few KB, over the 0.26 MP limit
MULTI = "multipart/form-data; boundary=b"

CASES = {  # name: (request keyword arguments, status, code)
    "not an image": ({"files": files(("x.png", b"not an image"))}, 415, "unsupported_media_type"),
    "gif": ({"files": files(("a.gif", GIF))}, 415, "unsupported_media_type"),
    "truncated png": ({"files": files(("cut.png", PNG[: len(PNG) // 2]))}, 422, "invalid_image"),
    "empty file": ({"files": files(("e.png", b""))}, 422, "invalid_image"),
    "pixel bomb": ({"files": files(("bomb.png", BOMB))}, 413, "too_many_pixels"),
    "json body": ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415,
                  "unsupported_media_type"),
    "raw garbage": ({"content": b"junk"}, 415, "unsupported_media_type"),
    "empty body": ({"content": b""}, 400, "no_image"),
    "no file part": ({"content": b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
                                 b"--b--\r\n", "headers": {"content-type": MULTI}}, 400, "no_image"),
    "cut multipart": ({"content": b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nab',
                       "headers": {"content-type": MULTI}}, 400, "bad_multipart"),
    "too large": ({"content": b"\0" * (2 << 20), "headers": {"content-type": MULTI}}, 413,
                  "payload_too_large"),
    "too many images": ({"files": files(*[("a.png", PNG)] * 5)}, 413, "too_many_images"),
}


@pytest.fixture(scope="module")
def app(served_bundle, serve_index, serve_detector):
    return app_for(served_bundle, index=str(serve_index), detector=str(serve_detector[0]),
                   max_pixels=512 * 512, max_body_mb=1, max_images=4)


@pytest.fixture(scope="module")
def client(app):
    with client_for(app) as c:
        yield c


@pytest.mark.parametrize("path", SURFACES)
@pytest.mark.parametrize("case", list(CASES))
def test_the_same_bad_input_gets_the_same_answer_everywhere(client, path, case):
    kwargs, status, code = CASES[case]
    r = client.post(path, **kwargs)
    assert r.status_code == status, (path, case, r.text)
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}


@pytest.mark.parametrize("path", SURFACES)
def test_a_good_image_is_answered_as_multipart_or_as_the_body(client, path):
    as_part = client.post(path + "?format=json", files=files(("a.png", PNG)))
    as_body = client.post(path + "?format=json", content=PNG, headers={"content-type": "image/png"})
    assert as_part.status_code == as_body.status_code == 200, (as_part.text, as_body.text)
    a, b = as_part.json(), as_body.json()
    a.pop("filename", None), b.pop("filename", None)
    for body in (a, b):
        for res in body.get("results", []):
            res.pop("filename"), res.pop("ms")
        body.pop("ms", None)
    assert a == b


def test_one_image_surfaces_refuse_a_second(client):
    for path in SURFACES[1:]:
        r = client.post(path, files=files(("a.png", PNG), ("b.png", PNG)))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_images", path


class HeldDecoder:
    """The real decoder, held at an event: counts the decodes that started."""

    def __init__(self):
        self.real = pipeline_module.decode
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self, data, max_pixels):
        with self._lock:
            self.started += 1
        self.release.wait(60)
        return self.real(data, max_pixels)


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def held(monkeypatch):
    decoder = HeldDecoder()
    monkeypatch.setattr(pipeline_module, "decode", decoder)
    yield decoder
    decoder.release.set()  # let abandoned threads finish


def test_admission_covers_every_surface(served_bundle, serve_index, serve_detector, held):
    """One request held in its decode fills the gate (max_queue=1): every surface answers
    503 busy + Retry-After at once, without decoding anything."""
    app = app_for(served_bundle, index=str(serve_index), detector=str(serve_detector[0]),
                  max_queue=1, request_timeout_s=60)
    with client_for(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/v1/predict", files=files(("a.png", PNG)))
        _wait_for(lambda: held.started == 1, "the first request never reached its decode")
        for path in SURFACES:
            r = c.post(path, files=files(("a.png", PNG)))
            assert r.status_code == 503 and r.json()["error"]["code"] == "busy", path
            assert r.headers["retry-after"] == "1"
        assert held.started == 1
        held.release.set()
        assert first.result(timeout=60).status_code == 200


def test_the_deadline_covers_every_surface(served_bundle, serve_index, serve_detector, held):
    """Decoding held past the deadline: every surface answers 503 at its deadline."""
    app = app_for(served_bundle, index=str(serve_index), detector=str(serve_detector[0]),
                  request_timeout_s=0.5)
    with client_for(app) as c:
        for path in SURFACES:
            r = c.post(path, files=files(("a.png", PNG)))
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["message"] == "no answer within 0.5 s"


def test_a_request_past_its_deadline_decodes_no_further_image(served_bundle, held):
    """Four images, the first held in its decode past the deadline: the answer is the
    deadline's 503, the thread finishes its one image holding its pixels, and the other
    three are never decoded."""
    app = app_for(served_bundle, request_timeout_s=0.5)
    budget = app.state.sw.pipeline.budget
    with client_for(app) as c:
        r = c.post("/v1/predict", files=files(*[("a.png", PNG)] * 4))
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy"
        assert held.started == 1 and budget.in_use == 40 * 40  # still decoding image 1
        held.release.set()
        _wait_for(lambda: budget.in_use == 0, "the pixels were never given back")
        assert held.started == 1
        assert c.post("/v1/predict", files=files(("a.png", PNG))).status_code == 200


def test_images_wait_for_room_in_the_pixel_budget(served_bundle, held):
    """Room for one 40x40 image at a time: a second request waits (its decode does not
    start) until the first one's pixels are given back, then both are answered."""
    app = app_for(served_bundle, max_pixels=40 * 40, max_pixels_in_flight=40 * 40)
    budget = app.state.sw.pipeline.budget
    with client_for(app) as c, ThreadPoolExecutor(2) as pool:
        first = pool.submit(c.post, "/v1/predict", files=files(("a.png", PNG)))
        _wait_for(lambda: held.started == 1, "the first decode never started")
        second = pool.submit(c.post, "/v1/predict", files=files(("b.png", PNG)))
        _wait_for(lambda: budget.waiting == 1, "the second request never waited for room")
        assert held.started == 1 and budget.in_use == 40 * 40
        held.release.set()
        assert first.result(timeout=60).status_code == 200
        assert second.result(timeout=60).status_code == 200
        assert held.started == 2 and budget.in_use == 0


@pytest.fixture(scope="module")
def live_full_server(served_bundle, serve_index, serve_detector, tmp_path_factory):
    from sw_serve_helpers import start_server

    server = start_server(tmp_path_factory.mktemp("full"), bundle=str(served_bundle),
                          index=str(serve_index), detector=str(serve_detector[0]),
                          request_timeout_s=1.0)
    yield server
    server.stop()


@pytest.mark.parametrize("path", SURFACES)
def test_a_stalled_body_is_a_408_on_every_surface(live_full_server, path):
    with socket.create_connection(("127.0.0.1", live_full_server.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     f"Content-Type: {MULTI}\r\n\r\n--b\r\n".encode())
        answer = sock.recv(4096)
        while b"\r\n\r\n{" not in answer and (more := sock.recv(4096)):
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
