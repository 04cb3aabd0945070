"""The web page's files, a self-hosted /docs page, and security headers.

FastAPI's default /docs loads Swagger UI from a CDN, which an offline machine cannot reach
and a careful one should not trust; /docs here is a plain page rendered from the same
OpenAPI document served at /openapi.json.
"""

from __future__ import annotations

import html
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

# Everything the page needs comes from this server; blob: for the overlay image it builds.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
       "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'none'")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """ASGI middleware adding the headers above to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def docs_page(openapi: dict) -> str:
    """An HTML list of the API's operations (no scripts, no external resources).

    >>> page = docs_page({"info": {"title": "T", "version": "1"}, "paths": {"/x": {"get": {
    ...     "summary": "<b>x</b>"}}}})
    >>> "<code>/x</code>" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    True
    """
    info = openapi.get("info", {})
    rows = []
    for path, ops in openapi.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(p.get("name", "") for p in op.get("parameters", []))
            rows.append(
                f"<tr><td>{html.escape(method.upper())}</td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(op.get('summary', ''))}</td>"
                f"<td>{html.escape(params)}</td></tr>")
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main class="docs"><h1>{title} API</h1>
<p>{html.escape(info.get('description', ''))}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3). Errors are
<code>{{"error": {{"code": ..., "message": ...}}}}</code>. Admin routes need
<code>Authorization: Bearer &lt;token&gt;</code>.</p>
<table><thead><tr><th>Method</th><th>Path</th><th>What</th><th>Parameters</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p><a href="/">Back to the page</a></p></main></body></html>"""
