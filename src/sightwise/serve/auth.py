"""Bearer-token gate: every admin and monitor route always, the prediction API with
--require-token.

The gate is ASGI middleware that runs before routing, so `/v1/admin/...` and
`/v1/monitor...` answer 401 for every HTTP method and every path under them, including
ones that do not exist (a 405 or 404 would tell an unauthenticated caller which routes
exist). Tokens are compared with
`hmac.compare_digest` so the comparison time does not reveal how much of a guess matched.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from sightwise.errors import SightwiseError
from sightwise.serve.schemas import ApiError
from sightwise.serve.settings import TOKEN_ENV

ADMIN_PREFIX = "/v1/admin"
MONITOR_PREFIX = "/v1/monitor"  # drift results and the labelling queue's images: operators'
ALWAYS_PROTECTED = (ADMIN_PREFIX, MONITOR_PREFIX)
# With --require-token: everything under /v1 (predict, explain, model). The page, the
# probes, the docs and /metrics stay open so a load balancer can check the process.
PROTECTED_PREFIX = "/v1/"
MIN_TOKEN_CHARS = 16

log = logging.getLogger("sightwise.serve")


def load_token(env: str = TOKEN_ENV, token_file: str | Path | None = None) -> str | None:
    """The token from `token_file` (first line) if given, else from the environment."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SightwiseError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise SightwiseError(f"token file {token_file} is empty")
    else:
        token = os.environ.get(env, "").strip()
    if token and len(token) < MIN_TOKEN_CHARS:
        log.warning("the API token is shorter than %d characters; use a random one "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                    MIN_TOKEN_CHARS)
    return token or None


def token_matches(authorization: str | None, token: str | None) -> bool:
    """True when `authorization` is `Bearer <token>` for the configured token.

    >>> token_matches("Bearer s3cret-token", "s3cret-token"), token_matches("Bearer x", "y")
    (True, False)
    >>> token_matches(None, "y"), token_matches("Bearer y", None)
    (False, False)
    """
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def always_protected(path: str) -> bool:
    """True for the paths that need the token whatever the settings.

    >>> [always_protected(p) for p in ("/v1/admin", "/v1/monitor/plot.png", "/v1/monitoring",
    ...                                "/v1/predict")]
    [True, True, False, False]
    """
    return any(path == p or path.startswith(p + "/") for p in ALWAYS_PROTECTED)


class TokenGate:
    """ASGI middleware answering 401 before routing for protected paths."""

    def __init__(self, app, token: str | None, require_for_api: bool):
        self.app, self.token, self.require_for_api = app, token, require_for_api

    def _protected(self, path: str) -> bool:
        return always_protected(path) or (
            self.require_for_api and path.startswith(PROTECTED_PREFIX))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._protected(scope["path"]):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                       if k == b"authorization"), None)
        if token_matches(header, self.token):
            return await self.app(scope, receive, send)
        if self.token is None:
            err = ApiError(401, "unauthorized", f"admin and monitor routes are disabled: start "
                           f"the server with {TOKEN_ENV} set or --token-file")
        else:
            err = ApiError(401, "unauthorized", "missing or wrong bearer token")
        err.headers["WWW-Authenticate"] = 'Bearer realm="sightwise"'
        from starlette.responses import JSONResponse

        await JSONResponse(err.body(), status_code=401, headers=err.headers)(scope, receive, send)
