"""`serve_main(settings)`: run the app with uvicorn for `sightwise serve`.

What it adds around `create_app`: the token from the environment or a file, the listening
socket bound first (a port in use is one clear line, before the model is loaded), uvicorn
with the guarded h11 protocol (header timeout, connection bounds: connections.py),
X-Forwarded-* trusted only from `--forwarded-allow-ips`, rate-limited warnings, and a
graceful shutdown on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading

from sightwise.core import parse_model_ref
from sightwise.errors import SightwiseError
from sightwise.serve.app import create_app
from sightwise.serve.auth import load_token
from sightwise.serve.connections import guarded_protocol
from sightwise.serve.logs import RateLimitFilter
from sightwise.serve.settings import LOOPBACK_NAMES, ServeSettings

log = logging.getLogger("sightwise.serve")
MAX_HEADER_BYTES = 16 * 1024  # request line + headers; larger is a 400


def serve_main(settings: ServeSettings | None = None, **changes) -> None:
    """`sightwise serve`: run until SIGTERM or Ctrl-C, then return after a graceful
    shutdown (in-flight requests finish, new connections are refused). Settings come as a
    `ServeSettings`, with `changes` applied (`serve_main(bundle="run/bundle", port=8080)`).

    Exactly one of `bundle` (a folder) or `model` (NAME@ALIAS, watched and hot-swapped,
    or NAME/VERSION, pinned) is served."""
    import uvicorn

    settings = (settings or ServeSettings()).with_(**changes)
    if (settings.bundle is None) == (settings.model is None):
        raise ValueError("give exactly one of --bundle DIR or --model NAME@ALIAS|NAME/VERSION")
    if settings.model is not None:
        parse_model_ref(settings.model)  # a bad reference fails before anything else
    token = load_token(settings.token_env, settings.token_file)
    if settings.require_token and not token:
        raise SightwiseError(f"--require-token needs a token: set {settings.token_env} or "
                             "pass --token-file")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind_socket(settings.host, settings.port)
    try:
        app = create_app(settings, token=token)
        if settings.host not in LOOPBACK_NAMES and not settings.require_token:
            log.warning("listening on %s without --require-token: anyone who can reach it can "
                        "use the prediction API", settings.host)
        _run(uvicorn, app, settings, sock)
    finally:
        sock.close()


def _run(uvicorn, app, settings: ServeSettings, sock: socket.socket) -> None:
    config = uvicorn.Config(
        app, log_level=settings.log_level, workers=1, server_header=False, ws="none",
        http=guarded_protocol(app.state.sw.connections, settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=None,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips)
    server = uvicorn.Server(config)
    # A client can make uvicorn warn at will (malformed requests, upgrade headers).
    logging.getLogger("uvicorn.error").addFilter(RateLimitFilter())
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    model = app.state.sw.slot.current
    log.info("serving %s on http://%s:%d (page /, API docs /docs)",
             model.label() if model else "(waiting for the registry)", shown, port)
    # uvicorn re-raises the signal it handled once its graceful shutdown is done; with the
    # default actions that would end the process "killed by SIGTERM" (or raise
    # KeyboardInterrupt) instead of returning, so park no-op handlers underneath it.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _ignore) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SightwiseError(f"the server did not start on {shown}:{port}")


def _ignore(signum, frame) -> None:
    """A signal handler that does nothing (see _run)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), or one line saying why it cannot be."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SightwiseError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reasons = {errno.EADDRINUSE: "is already in use (another server?); choose another "
                   "with --port",
                   errno.EACCES: "needs privileges (ports below 1024); choose another with --port",
                   errno.EADDRNOTAVAIL: "is not on an address of this machine; check --host"}
        why = reasons.get(exc.errno, f"cannot be used ({exc.strerror})")
        raise SightwiseError(f"port {port} on {host} {why}") from None
    sock.set_inheritable(True)
    return sock
