"""Host and Origin checks against DNS rebinding and cross-site requests.

A web page on a rebinding domain (evil.example resolving to 127.0.0.1) can make a
browser talk to a loopback server; the browser then sends `Host: evil.example`. Only the
names the server is meant to be reached by are answered (loopback names, the bound
address, `--allowed-hosts`); any other Host gets a 400 JSON error before routing.

A page on another site can also POST a form or a blob to the server without the browser
asking first (no CORS preflight for such "simple" requests); it cannot read the answer,
but the request still runs. Browsers name the sending page in `Origin`, so a request
whose Origin is present and names a host outside the same list is refused with a 403.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sightwise.serve.admission import send_error
from sightwise.serve.schemas import ApiError


def host_name(value: str) -> str:
    """The host part of a Host header or an Origin's netloc, lower case, without the port.

    >>> host_name("Example.COM:8000"), host_name("[::1]:8000"), host_name("::1"), host_name("a.")
    ('example.com', '::1', '::1', 'a')
    """
    value = value.strip().lower()
    if value.startswith("["):  # [IPv6]:port
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed(name: str, names: frozenset[str]) -> bool:
    """Exact names, or `*.suffix` entries for any subdomain of suffix.

    >>> names = frozenset({"*.corp.example"})
    >>> allowed("a.corp.example", names), allowed("corp.example", names)
    (True, False)
    """
    if name in names:
        return True
    return any(n.startswith("*.") and name.endswith(n[1:]) for n in names)


class HostCheck:
    """ASGI middleware: 400 for a Host outside `names`, 403 for a foreign Origin.
    `names=None` turns both checks off (`--allowed-hosts '*'`)."""

    def __init__(self, app, names: frozenset[str] | None):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        raw = scope.get("headers", ())
        hosts = [v.decode("latin-1") for k, v in raw if k == b"host"]
        host = hosts[0] if len(hosts) == 1 else ""  # none, or two that could disagree
        if not host or not allowed(host_name(host), self.names):
            shown = host[:100] or "(none)"
            return await send_error(send, ApiError(
                400, "host_not_allowed", f"Host {shown!r} is not served here; start the "
                "server with --allowed-hosts naming it"))
        origin = next((v for k, v in raw if k == b"origin"), None)
        if origin is not None:
            netloc = urlsplit(origin.decode("latin-1")).netloc
            if not netloc or not allowed(host_name(netloc), self.names):
                return await send_error(send, ApiError(
                    403, "origin_not_allowed", "requests from other sites' pages are refused"))
        return await self.app(scope, receive, send)
