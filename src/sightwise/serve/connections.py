"""The front door: a header-read timeout and connection bounds for uvicorn's h11 protocol.

uvicorn closes idle keep-alive connections, but a connection that sends nothing, or half
a request line, is kept forever; ~256 of them used to lock every client out (uvicorn's
plain-text 503 for its concurrency limit). `GuardedH11Protocol` adds what it lacks:

- a header-read timeout: from accept (and from the end of each response on a keep-alive
  connection) to complete request headers, at most `header_timeout_s`, else the
  connection is closed (nginx's client_header_timeout, Go's ReadHeaderTimeout);
- connection bounds per client address and in all. At a bound the oldest connection
  that is waiting for headers (idle keep-alive, slow or silent) is closed to make room,
  so a flood of idle sockets cannot lock out a real request; only when every connection
  of that client is busy with a request is the new one refused, with the JSON error
  every other refusal uses (503 + Retry-After) instead of uvicorn's plain text;
- warnings about refusals and malformed requests at most once a minute per kind, with a
  count of what was left out (a client must not be able to flood the log).

uvicorn's own `limit_concurrency` is left off: the bounds here replace it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sightwise.serve.logs import RateLimitedLog

log = logging.getLogger("sightwise.serve")


class ConnectionTable:
    """Open connections by client address, the ones waiting for request headers in the
    order they started waiting, and counts of what happened to them."""

    def __init__(self, max_total: int, max_per_client: int, retry_after_s: int = 1):
        self.max_total, self.max_per_client = int(max_total), int(max_per_client)
        self.retry_after_s = int(retry_after_s)
        self._client: dict[object, str] = {}
        self._per_client: Counter[str] = Counter()
        self._idle: dict[object, None] = {}  # insertion order = longest waiting first
        self.counts: Counter[str] = Counter()  # accepted, evicted, refused, header_timeout
        self._warn = RateLimitedLog(log.warning)

    @property
    def open(self) -> int:
        return len(self._client)

    def admit(self, conn, client: str) -> bool:
        """Register a new connection; False if it must be refused. Makes room first by
        closing the longest-waiting idle connection of the same client (or of anyone,
        at the total bound)."""
        self._client[conn] = client
        self._per_client[client] += 1
        self.counts["accepted"] += 1
        if self._per_client[client] > self.max_per_client:
            victim, bound = self._longest_idle(client), f"{self.max_per_client} per client"
        elif len(self._client) > self.max_total:
            victim, bound = self._longest_idle(None), f"{self.max_total} in all"
        else:
            return True
        if victim is not None:
            self.forget(victim)
            victim.evict()
            self.counts["evicted"] += 1
            return True
        self.counts["refused"] += 1
        self._warn.warning("refused", "refusing new connections from %s: the connection limit "
                           "(%s) is reached and every connection is busy", client, bound)
        return False

    def _longest_idle(self, client: str | None):
        for conn in self._idle:
            if client is None or self._client.get(conn) == client:
                return conn
        return None

    def idle(self, conn) -> None:
        """`conn` waits for request headers (new, or between keep-alive requests)."""
        if conn in self._client:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def busy(self, conn) -> None:
        """`conn` has a request in progress: it is never closed to make room."""
        self._idle.pop(conn, None)

    def forget(self, conn) -> None:
        client = self._client.pop(conn, None)
        self._idle.pop(conn, None)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

    def status(self) -> dict:
        return {"open": self.open, "waiting_for_headers": len(self._idle),
                "clients": len(self._per_client), "max_total": self.max_total,
                "max_per_client": self.max_per_client, **dict(self.counts)}

    def refusal_app(self):
        """The ASGI app a refused connection's request gets: a JSON 503 that closes it."""
        body = json.dumps({"error": {"code": "too_many_connections", "message": "too many "
                           "open connections from this client; retry shortly"}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(self.retry_after_s).encode()),
                   (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]

        async def refuse(scope, receive, send):
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return refuse


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection bounds above.
    Use `guarded_protocol(table, header_timeout_s)` to get a class bound to a table."""

    table: ConnectionTable
    header_timeout_s: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        client = self.client[0] if self.client else "unknown"
        if not self.table.admit(self, client):
            self.app = self.table.refusal_app()  # this connection's request gets the 503
        self._wait_for_headers()

    def _wait_for_headers(self) -> None:
        self._stop_waiting()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)
        self.table.idle(self)

    def _stop_waiting(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.table.counts["header_timeout"] += 1
            self.table.forget(self)
            self.transport.close()

    def evict(self) -> None:
        """Closed to make room for a new connection (it was waiting for headers)."""
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete: it is busy now
            self._stop_waiting()
            self.table.busy(self)

    def on_response_complete(self) -> None:
        # Waiting for the next request's headers starts now; armed before uvicorn runs a
        # pipelined request (which disarms it again in handle_events).
        if not self.transport.is_closing():
            self._wait_for_headers()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._stop_waiting()
        self.table.forget(self)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in the API's JSON error shape."""
        body = json.dumps({"error": {"code": "bad_request", "message": msg}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response was already under way
            pass
        self.transport.close()


def guarded_protocol(table: ConnectionTable, header_timeout_s: float) -> type[GuardedH11Protocol]:
    """A protocol class for `uvicorn.Config(http=...)`, bound to `table`."""
    return type("SightwiseH11Protocol", (GuardedH11Protocol,),
                {"table": table, "header_timeout_s": float(header_timeout_s)})
