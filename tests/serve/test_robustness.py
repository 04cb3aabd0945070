"""Hostile and heavy traffic against the real server (uvicorn in a subprocess, loopback):
fuzzed uploads, 10 000-part and oversized bodies, overload, SIGTERM under load.

Invariants: bad input gets a JSON 4xx and never a 5xx; the worker process is the same one
afterwards (same PID, still answering); overload is answered 503 + Retry-After and the
server recovers; SIGTERM lets in-flight requests finish, refuses new ones, exits 0.
Outcomes are counted, never timed (timing belongs to bench/serve.py).
"""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sw_serve_helpers import AUTH, TOKEN, encode, files, flood, start_server

MIB = 1 << 20


@pytest.fixture(scope="module")
def server(served_bundle, tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("fuzz"), bundle=str(served_bundle), max_body_mb=1,
                     max_images=4, max_batch=8, env={"SIGHTWISE_TOKEN": TOKEN})
    s.pid = s.get("/v1/admin/status", headers=AUTH).json()["pid"]  # not in /healthz (#26)
    assert s.pid == s.proc.pid
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8))
    return [encode(img, f) for f in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")]


VALID = _valid_images()

garbage = st.binary(max_size=4096)
truncated = st.tuples(st.sampled_from(VALID), st.floats(0, 1)).map(
    lambda t: t[0][: int(len(t[0]) * t[1])])
flipped = st.tuples(st.sampled_from(VALID), st.lists(st.tuples(st.floats(0, 1),
                                                                st.integers(1, 255)),
                                                      min_size=1, max_size=8)).map(
    lambda t: bytes(_flip(t[0], t[1])))
names = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(
    ["../../etc/passwd", "a\\b.png", "%00.png", "ünïcødé.jpg", "x" * 300, "a;b=c\".png"]))


def _flip(data: bytes, flips) -> bytearray:
    out = bytearray(data)
    for where, mask in flips:
        out[min(len(out) - 1, int(where * len(out)))] ^= mask
    return out


def _check(r: httpx.Response, allow_ok: bool) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"code", "message"}
    else:
        assert allow_ok, "garbage was accepted as an image"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(garbage, truncated, flipped), name=names,
       ctype=st.sampled_from(["image/png", "application/octet-stream", "text/plain", ""]))
def test_fuzzed_uploads_get_4xx_never_5xx(http, data, name, ctype):
    r = http.post("/v1/predict", files=[("file", (name or "", data, ctype or None))])
    # Truncation after the last pixel or a flip in a padding byte can leave a valid image.
    _check(r, allow_ok=True)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=garbage.filter(lambda b: b[:4] not in (b"\x89PNG", b"\xff\xd8\xff\xe0")))
def test_random_bytes_are_never_an_image(http, data):
    _check(http.post("/v1/predict", files=files(("x", data))), allow_ok=False)
    _check(http.post("/v1/explain", files=files(("x", data))), allow_ok=False)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
# Content types the client can send: httpx/h11 refuse a header value with surrounding whitespace.
@given(body=st.binary(max_size=2048),
       ctype=st.one_of(st.sampled_from([
           "multipart/form-data; boundary=b", "multipart/form-data", "multipart/mixed",
           "application/json", "image/png", "text/plain; charset=utf-8", "",
           "multipart/form-data; boundary=" + "-" * 70, "multipart/form-data; boundary=\"\""]),
           st.text(max_size=60).filter(lambda s: s.isascii() and s.isprintable() and s == s.strip())))
def test_fuzzed_bodies_and_content_types(http, body, ctype):
    r = http.post("/v1/predict", content=body, headers={"content-type": ctype})
    _check(r, allow_ok=False)


def test_ten_thousand_parts_are_refused(http):
    part = b'--b\r\nContent-Disposition: form-data; name="meta"\r\n\r\nx\r\n'
    body = part * 10_000 + b"--b--\r\n"
    assert len(body) < MIB
    r = http.post("/v1/predict", content=body,
                  headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_parts"


def test_oversized_bodies_declared_and_streamed(http):
    r = http.post("/v1/predict", content=b"\0" * (2 * MIB),
                  headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413

    def chunks():
        for _ in range(64):
            yield b"-" * 65536

    try:
        r = http.post("/v1/predict", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code in (400, 413)  # 400 if the parser objects first
    except httpx.TransportError:
        pass  # the server may close while a chunked upload is still being written


def test_the_worker_survived_everything(server, http, sample_images):
    """Runs after the fuzzing above (file order): same process, still answering."""
    assert server.proc.poll() is None
    assert http.get("/v1/admin/status", headers=AUTH).json()["pid"] == server.pid
    r = http.post("/v1/predict", files=files(sample_images[0]))
    assert r.status_code == 200
    assert "Traceback" not in server.log_tail()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_overload_is_shed_quickly_and_the_server_recovers(live_server, served_bundle,
                                                          sample_images, tmp_path):
    """48 raw keep-alive clients (several times capacity) for 5 s: the excess is answered
    503 + Retry-After (also to a separate probe client), nothing else but 200 and 503 is
    ever answered, memory stays bounded, and afterwards service is normal."""
    server = live_server(bundle=str(served_bundle), max_queue=4, max_batch=4)
    pid = server.proc.pid
    image = tmp_path / "a.png"
    image.write_bytes(sample_images[0][1])
    rss_before = _rss_mib(pid)
    load = flood(server.url, image, 5.0, 48)
    shed = 'sightwise_http_requests_total{method="POST",route="/v1/predict",status="503"}'
    deadline = time.monotonic() + 30
    while shed not in server.get("/metrics").text:  # the flood is being shed
        assert time.monotonic() < deadline and load.poll() is None, "the flood never overloaded"
        time.sleep(0.05)
    probe: list[tuple[int, str | None]] = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while load.poll() is None and len(probe) < 2000:  # while the flood lasts (bounded)
            r = http.post("/v1/predict", files=files(sample_images[0]))
            probe.append((r.status_code, r.headers.get("retry-after")))
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "busy"
    counts = json.loads(load.communicate(timeout=60)[0])
    rss_after = _rss_mib(pid)
    assert set(counts) <= {"200", "503"}, counts
    assert counts["503"] > 2 * counts.get("200", 0), counts  # really well above capacity
    assert {s for s, _ in probe} <= {200, 503}
    busy = [ra for s, ra in probe if s == 503]
    assert len(busy) >= 10 and set(busy) == {"1"}
    assert rss_after - rss_before < 150, (rss_before, rss_after)
    for _ in range(5):  # recovered: sequential requests are answered
        r = httpx.post(server.url + "/v1/predict", files=files(sample_images[0]), timeout=30)
        assert r.status_code == 200
    assert server.proc.poll() is None and server.proc.pid == pid
    lines = [line for line in server.get("/metrics").text.splitlines() if line.startswith(shed)]
    assert lines and float(lines[0].split()[-1]) >= counts["503"]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(
        live_server, served_bundle, sample_images):
    # A 600 ms batch window holds requests in the server while the signal arrives.
    server = live_server(bundle=str(served_bundle), batch_window_ms=600, max_batch=64)
    data = sample_images[0][1]
    answers: list = []

    def send():
        try:
            answers.append(httpx.post(server.url + "/v1/predict",
                                      files=files(("a.png", data)), timeout=30).status_code)
        except httpx.HTTPError as exc:
            answers.append(repr(exc))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while "sightwise_queue_depth 6.0" not in server.get("/metrics").text:
        assert time.monotonic() < deadline, "requests never reached the queue"
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn closes the listening socket: new connections are refused (wait for it).
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2):
                pass
        except OSError:
            break
        assert time.monotonic() < deadline, "the listening socket stayed open"
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=30)
    assert answers == [200] * 6, answers
    assert server.proc.wait(timeout=30) == 0, server.log_tail()
    assert "Traceback" not in server.log_tail()


def test_explain_png_is_a_real_png(http, sample_images):
    r = http.post("/v1/explain", files=files(sample_images[0]))
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).format == "PNG"


def test_a_stalled_upload_times_out_with_408(live_server, served_bundle):
    server = live_server(bundle=str(served_bundle), request_timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        answer = sock.recv(4096)
        while b"\r\n\r\n{" not in answer and (more := sock.recv(4096)):
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    assert server.get("/healthz").status_code == 200
