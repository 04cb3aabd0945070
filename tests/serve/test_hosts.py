"""#26 finding 2 (DNS rebinding): only the names the server is meant to be reached by are
answered; any other Host gets a 4xx JSON error, and a page on another site (its Origin)
cannot make the browser use the API."""

from __future__ import annotations

import pytest
from sw_serve_helpers import app_for, client_for, files

from sightwise.serve.hosts import host_name
from sightwise.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def client(served_bundle):
    with client_for(app_for(served_bundle, allowed_hosts=("models.example", "*.corp.example"))) as c:
        yield c


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000",
                                  "::1", "127.0.0.1", "models.example", "a.corp.example:443",
                                  "localhost."])
def test_allowed_hosts_are_answered(client, host):
    assert client.get("/v1/model", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "corp.example", "models.example.evil", "localhost.evil", "",
                                  "127.0.0.2", "[::2]:80"])
@pytest.mark.parametrize("path", ["/v1/model", "/healthz", "/", "/v1/admin/reload"])
def test_other_hosts_get_a_json_400_on_every_path(client, host, path):
    r = client.get(path, headers={"host": host})
    assert r.status_code == 400, (host, path)
    assert r.json()["error"]["code"] == "host_not_allowed"


def test_pages_of_other_sites_cannot_use_the_api(client, sample_images):
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example:8000"):
        r = client.post("/v1/predict", files=files(sample_images[0]), headers={"origin": origin})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    # The page's own requests (same origin) carry an allowed Origin.
    r = client.post("/v1/predict", files=files(sample_images[0]),
                    headers={"origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200


def test_the_allowlist_follows_the_bound_address():
    assert ServeSettings(host="10.1.2.3").host_allowlist() == {"127.0.0.1", "localhost", "::1",
                                                                 "10.1.2.3"}
    assert "models.example" in ServeSettings(allowed_hosts=("Models.Example.",)).host_allowlist()
    assert ServeSettings(allowed_hosts=("*",)).host_allowlist() is None
    import socket

    wildcard = ServeSettings(host="0.0.0.0").host_allowlist()
    assert socket.gethostname().lower() in wildcard and "0.0.0.0" not in wildcard


def test_any_host_when_the_check_is_turned_off(served_bundle):
    with client_for(app_for(served_bundle, allowed_hosts=("*",))) as c:
        assert c.get("/v1/model", headers={"host": "anything.example"}).status_code == 200


def test_host_names_are_compared_without_port_case_or_trailing_dot():
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("[::1]") == "::1"
