"""The front door on a real server (uvicorn in a subprocess, loopback only).

#26 finding 1: idle and slow-header connections are closed by the header-read timeout and
never lock out /healthz (the issue's repro: 300 idle sockets, then /healthz). A client
whose connections are all busy gets the JSON 503 with Retry-After, and other clients are
not affected. Finding 11: the refusals are logged once, not once each; X-Forwarded-For is
trusted only from --forwarded-allow-ips.

Busy connections come from 127.0.0.2 (all of 127/8 is loopback), so the test can watch
the server from 127.0.0.1 without using one of that client's connection slots.
"""

from __future__ import annotations

import re
import selectors
import socket
import time

import httpx
import pytest
from sw_serve_helpers import start_server

from sightwise.serve.logs import RateLimitFilter

PER_CLIENT = 8
STALLED = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
           b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")


@pytest.fixture(scope="module")
def server(served_bundle, tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("front"), bundle=str(served_bundle),
                     header_timeout_s=2.0, max_connections_per_client=PER_CLIENT,
                     request_timeout_s=120.0, log_level="info")
    yield s
    s.stop()


def _connect(server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def _closed_by_server(socks: list[socket.socket], timeout: float = 60.0) -> int:
    """Wait until the server has closed each socket (EOF or reset); how many it closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            try:
                data = key.fileobj.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
    for s in socks:
        s.close()
    return closed


def _metric(server, name: str) -> float:
    line = next(x for x in server.get("/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def _count(server, event: str) -> float:
    return _metric(server, f'sightwise_connections_total{{event="{event}"}}')


def test_three_hundred_idle_sockets_do_not_lock_out_healthz(server):
    """The issue's repro plus 20 half-sent request lines: /healthz answers 200 while they
    are open, and afterwards every one of them has been closed by the server."""
    before = _count(server, "evicted") + _count(server, "header_timeout")
    socks = [_connect(server) for _ in range(300)]
    for _ in range(20):
        s = _connect(server)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        socks.append(s)
    r = server.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert _closed_by_server(socks) == len(socks)
    assert server.get("/healthz").status_code == 200
    after = _count(server, "evicted") + _count(server, "header_timeout")
    assert after - before >= len(socks)
    assert "Traceback" not in server.log_text()


def test_the_header_timeout_closes_silent_and_slow_connections(server):
    """Below the connection bound (nothing is evicted), only the header timeout can close
    these: silent, half a request line, and a keep-alive connection that sent one request
    and then half of the next."""
    before = _count(server, "header_timeout")
    silent, slow, kept = _connect(server), _connect(server), _connect(server)
    slow.sendall(b"GET /healthz HT")
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert _closed_by_server([silent, slow, kept]) == 3
    assert _count(server, "header_timeout") - before == 3


def test_a_client_whose_connections_are_all_busy_gets_a_json_503(server):
    busy = [_connect(server, "127.0.0.2") for _ in range(PER_CLIENT)]
    for s in busy:
        s.sendall(STALLED)  # headers complete, body never comes: busy until closed
    deadline = time.monotonic() + 30
    while _metric(server, "sightwise_in_flight_requests") < PER_CLIENT:
        assert time.monotonic() < deadline, "the stalled uploads never reached the app"
        time.sleep(0.02)
    answers = []
    for _ in range(20):
        with _connect(server, "127.0.0.2") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while (more := s.recv(4096)):
                answer += more
            answers.append(answer)
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert re.search(rb"(?i)\r\nretry-after: 1", head) and b"application/json" in head
        assert body == (b'{"error": {"code": "too_many_connections", "message": "too many open '
                        b'connections from this client; retry shortly"}}')
    assert server.get("/healthz").status_code == 200  # another client is not affected
    assert _count(server, "refused") >= 20
    # Finding 11: one warning for twenty refusals (at most one a minute).
    assert server.log_text().count("refusing new connections from 127.0.0.2") == 1
    for s in busy:
        s.close()
    deadline = time.monotonic() + 30
    while _metric(server, "sightwise_in_flight_requests") > 0:
        assert time.monotonic() < deadline, "the closed uploads are still in flight"
        time.sleep(0.02)
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as http:
        assert http.get(server.url + "/healthz").status_code == 200
    # Uploads cut off by their client are not server errors: no traceback in the log.
    assert "Traceback" not in server.log_text() and "internal error" not in server.log_text()


def test_malformed_requests_get_the_json_error_and_one_warning(server):
    for _ in range(5):
        with _connect(server) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
            answer = b""
            try:
                while (more := s.recv(4096)):
                    answer += more
            except ConnectionResetError:
                pass
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, answer[:300]
        assert body.startswith(b'{"error": {"code": "bad_request"')
    assert server.log_text().count("Invalid HTTP request received.") <= 1


def test_forwarded_headers_are_trusted_only_when_configured(server, served_bundle, tmp_path):
    forged = "203.0.113.9"
    assert server.get("/healthz", headers={"X-Forwarded-For": forged}).status_code == 200
    assert server.get("/healthz").status_code == 200  # one more access line after it
    assert '"GET /healthz HTTP/1.1" 200' in server.log_text()
    assert forged not in server.log_text()
    proxied = start_server(tmp_path, bundle=str(served_bundle), log_level="info",
                           forwarded_allow_ips="127.0.0.1")
    try:
        assert proxied.get("/healthz", headers={"X-Forwarded-For": forged}).status_code == 200
        assert proxied.get("/healthz").status_code == 200
        assert forged in proxied.log_text()
    finally:
        proxied.stop()


def test_rate_limited_warnings_say_how_many_were_left_out():
    import logging

    now = [0.0]
    limiter = RateLimitFilter(60.0, clock=lambda: now[0])

    def record(msg):
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, (), None)

    kept = [r.getMessage() for r in (record("Invalid HTTP request received.")
                                     for _ in range(50)) if limiter.filter(r)]
    assert kept == ["Invalid HTTP request received."]
    assert limiter.filter(record("another kind"))  # each message on its own clock
    now[0] = 61.0
    r = record("Invalid HTTP request received.")
    assert limiter.filter(r)
    assert r.getMessage() == "Invalid HTTP request received. (49 more since the last report)"
    info = logging.LogRecord("x", logging.INFO, __file__, 1, "access", (), None)
    assert all(limiter.filter(info) for _ in range(5))  # only warnings are limited
