"""The server's audit trail (#22): `--audit-log PATH` (sightwise.privacy.AuditLog, JSON
Lines, hash-chained, verified by `sightwise privacy verify-audit PATH`).

What is recorded, each with the time, the client's address, the token id (a short hash of
the bearer token, never the token) and the model version answering:
- every request to a token-protected route (/v1/admin/..., /v1/monitor...), with its
  status and what the route adds (a reload's outcome, the versions before and after),
  written before the answer leaves, so an answered admin action is always in the trail.
  Refused requests (401) are recorded too, at most `REFUSALS_PER_MINUTE` a minute: a
  client without the token must not be able to fill the disk (the rest are counted and
  the count goes into the next refusal written);
- the server's start and stop;
- with `--audit-predictions`, every answered prediction (image sha256, top class and its
  probability), through a prediction observer, off the request path (if the trail falls
  behind, events are dropped and counted in /metrics under observer="audit").
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import anyio
import numpy as np

from sightwise.errors import SightwiseError
from sightwise.privacy.audit import AuditLog, token_id
from sightwise.serve.logs import RateLimitedLog
from sightwise.serve.observers import PredictionEvent

log = logging.getLogger("sightwise.serve")
ACTIONS = {"/v1/admin/reload": "admin.reload", "/v1/admin/status": "admin.status",
           "/v1/admin/audit": "admin.audit", "/v1/monitor": "monitor.summary",
           "/v1/monitor/plot.png": "monitor.plot"}
REFUSALS_PER_MINUTE = 30


class ServeAudit:
    """The server's side of the audit log: admin requests, start/stop, predictions."""

    def __init__(self, path, token: str | None, model_version: Callable[[], str | None]):
        self.log = AuditLog(path)
        self.token_id = token_id(token)
        self.model_version = model_version
        self.counts: Counter[str] = Counter({"written": 0, "errors": 0, "suppressed": 0})
        self._refusals: deque[float] = deque()
        self._suppressed = 0
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log.error)
        try:  # fail at start-up: an unwritable path, or a log whose last line is no record
            self.log.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log.path, "ab"):
                pass
            self.log.head()
        except (OSError, ValueError) as exc:
            raise SightwiseError(f"--audit-log {path}: {exc}") from None

    def append(self, action: str, **fields) -> None:
        """Write one record; a failure (a full disk) is logged and counted, never raised."""
        try:
            self.log.append(action, **fields)
            self.counts["written"] += 1
        except Exception as exc:  # noqa: BLE001 - the audit trail must not stop the server
            self.counts["errors"] += 1
            self._warn.warning("write", "audit log %s not written: %s", self.log.path, exc)

    def server(self, action: str, **result) -> None:
        self.append(action, model_version=self.model_version(), result=result or None)

    def request(self, scope: dict, status: int) -> None:
        """One token-protected request, answered with `status`."""
        path = scope.get("path", "")
        extra: dict = {}
        if status == 401:
            if not self._admit_refusal():
                return
            extra["refusals_not_recorded_before"] = self._take_suppressed() or None
        action = ACTIONS.get(path, "admin.other")
        if action == "admin.other":
            extra["path"] = path[:200]
        detail = (scope.get("state") or {}).get("audit")
        result = {"status": status, **(detail or {})}
        client = (scope.get("client") or (None,))[0]
        self.append(action, client=client, model_version=self.model_version(),
                    token_id=self.token_id if status != 401 else None,
                    method=scope.get("method"), result=result,
                    **{k: v for k, v in extra.items() if v is not None})

    def _admit_refusal(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._refusals and now - self._refusals[0] > 60.0:
                self._refusals.popleft()
            if len(self._refusals) >= REFUSALS_PER_MINUTE:
                self._suppressed += 1
                self.counts["suppressed"] += 1
                return False
            self._refusals.append(now)
            return True

    def _take_suppressed(self) -> int:
        with self._lock:
            n, self._suppressed = self._suppressed, 0
        return n

    def tail(self, n: int) -> dict:
        return {"path": str(self.log.path), "records": self.log.tail(n), "head": self.log.head()}


class AuditObserver:
    """--audit-predictions: one audit record per answered prediction."""

    name = "audit"

    def __init__(self, audit: ServeAudit):
        self.audit = audit

    def __call__(self, event: PredictionEvent) -> None:
        probs = np.asarray(event.probabilities)
        c = int(probs.argmax())
        label = event.classes[c] if event.classes is not None and c < len(event.classes) else c
        self.audit.append("predict", client=event.client, token_id=event.token_id,
                          model_version=str(event.version), model=event.model,
                          image_sha256=event.image_sha256,
                          result={"label": label, "probability": round(float(probs[c]), 6)})


class AuditMiddleware:
    """ASGI middleware: each request to a protected path is recorded when its answer
    starts (before a byte of it is sent). Runs outside the token gate, so refusals are
    seen too."""

    def __init__(self, app, audit: ServeAudit | None, protected: Callable[[str], bool]):
        self.app, self.audit, self.protected = app, audit, protected

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or self.audit is None
                or not self.protected(scope.get("path", ""))):
            return await self.app(scope, receive, send)
        recorded = False

        async def audited(message):
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await anyio.to_thread.run_sync(self.audit.request, scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, audited)
        finally:
            if not recorded:  # an exception before any answer: the app answers 500 later
                await anyio.to_thread.run_sync(self.audit.request, scope, 500)
