"""Every setting of the server in one frozen record.

`sightwise serve` builds a `ServeSettings` from its options, `serve_main(settings)` runs it
and `create_app(settings)` wires the app from it: each knob is named and documented once,
here. Standard library only, so the CLI can import it for its defaults without pulling in
numpy, Pillow or FastAPI.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields, replace

MIB = 1 << 20
# Equal to sightwise.data.decode.DEFAULT_MAX_PIXELS (a test keeps them equal); repeated
# here so that importing the settings does not import numpy and Pillow.
DEFAULT_MAX_PIXELS = 40_000_000
TOKEN_ENV = "SIGHTWISE_TOKEN"
# Names a browser on this machine uses for a loopback server. They are always allowed: a
# DNS-rebinding page reaches the server under the attacker's own name, never these.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def host_allowlist(bound_host: str, allowed_hosts=()) -> frozenset[str] | None:
    """Host names requests to a server bound on `bound_host` may carry (lower case): loopback,
    the bound name (the machine's name when bound everywhere) and `allowed_hosts`; None when
    `allowed_hosts` holds "*" (any)."""
    extra = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
    if "*" in extra:
        return None
    names = {*LOOPBACK_NAMES, *extra}
    bound = bound_host.strip("[]").lower()
    if bound in WILDCARD_ADDRESSES:
        # Listening everywhere: the machine's own name is the one LAN clients use.
        # Anything else (its IP addresses, a DNS alias) must be listed explicitly.
        names.add(socket.gethostname().lower())
    else:
        names.add(bound)
    return frozenset(names)



@dataclass(frozen=True)
class ServeSettings:
    """What `sightwise serve` serves and how; the defaults suit a laptop on loopback."""

    # -- what to serve: a bundle folder (or a run folder holding bundle/), or a registry
    # reference (NAME@ALIAS is watched and hot-swapped, NAME/VERSION is pinned).
    bundle: str | None = None
    model: str | None = None
    name: str | None = None           # the served name (default: folder or registry name)
    version: int | str | None = None  # the served version (default: local-<sha> of a folder)
    shadow: str | None = None         # a candidate (NAME@ALIAS | NAME/VERSION) run on a copy of traffic
    index: str | None = None          # search index folder: POST /v1/search
    detector: str | None = None       # defect detector bundle: POST /v1/inspect

    # -- network
    host: str = "127.0.0.1"
    port: int = 8000                  # 0: any free port (the log says which)
    allowed_hosts: tuple[str, ...] = ()  # Host names besides loopback and `host`; "*": any
    forwarded_allow_ips: str | None = None  # proxies trusted for X-Forwarded-*; None: none
    header_timeout_s: float = 10.0    # a connection must send complete request headers in time
    keep_alive_s: float = 5.0         # idle keep-alive connections are closed after this
    max_connections: int = 1024       # open connections in all
    max_connections_per_client: int = 64  # open connections from one client address

    # -- access
    token_env: str = TOKEN_ENV
    token_file: str | None = None
    require_token: bool = False       # the token for /v1 too (admin routes always need it)

    # -- what one request may hold, and how much work is admitted at once
    max_body_mb: float = 16.0
    max_images: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, read from the header before decoding
    max_pixels_in_flight: int | None = None  # decoding at once, all requests; None: 2 x max_pixels
    max_queue: int = 64               # inference requests admitted at once; more: 503
    request_timeout_s: float = 30.0
    retry_after_s: int = 1

    # -- inference
    max_batch: int = 16
    batch_window_ms: float = 2.0
    threads: int | None = None        # onnxruntime threads per batch worker
    workers: int | None = None        # batch worker threads (default 2, 1 on one core)
    watch_interval_s: float = 5.0
    log_level: str = "info"

    # -- the prediction log and the drift monitor (docs/guides/monitoring.md)
    log: bool = True                  # record every prediction (False: --no-log)
    log_dir: str | None = None        # default: $SIGHTWISE_HOME/logs/<served name>
    keep_images: bool = False         # keep the uploads (metadata stripped) for labelling
    blur_faces: bool = False          # blur faces in kept images (the faces extra)
    retain: str = "30d"               # records and kept images older than this are removed
    log_max_size: str = "1GiB"        # and the oldest beyond this size
    monitor_window: int = 100         # predictions per drift-test window
    alert_webhook: str | None = None  # POST each drift alert as JSON here
    queue_dir: str | None = None      # the labelling queue (default: <log>/labelling-queue)

    # -- the audit trail (docs/guides/privacy.md)
    audit_log: str | None = None      # hash-chained record of every admin action
    audit_predictions: bool = False   # ... and of every prediction

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (0: any free port), got {self.port}")
        positive = ("max_connections", "max_connections_per_client", "max_images",
                    "max_pixels", "max_queue", "max_batch", "retry_after_s")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "keep_alive_s", "request_timeout_s", "max_body_mb",
                     "watch_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise ValueError("batch_window_ms must be >= 0")
        if self.max_pixels_in_flight is not None and self.max_pixels_in_flight < self.max_pixels:
            raise ValueError("max_pixels_in_flight must be at least max_pixels (one image "
                             "at the limit must fit)")
        for name in ("threads", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        self._check_monitoring()
        if self.shadow is not None and self.model is None:
            raise ValueError("--shadow compares registry versions: serve the primary with "
                             "--model NAME@ALIAS (or NAME/VERSION)")
        if isinstance(self.allowed_hosts, str):  # a bare string would be split into letters
            object.__setattr__(self, "allowed_hosts", parse_hosts(self.allowed_hosts))

    def _check_monitoring(self) -> None:
        # sightwise.monitor.log is standard library only, like this module.
        from sightwise.monitor.log import parse_retain, parse_size

        parse_retain(self.retain)
        parse_size(self.log_max_size)
        if self.monitor_window < 2:
            raise ValueError(f"monitor_window must be at least 2, got {self.monitor_window}")
        if self.keep_images and not self.log:
            raise ValueError("--keep-images keeps images in the prediction log: drop --no-log")
        if self.blur_faces and not self.keep_images:
            raise ValueError("--blur-faces applies to kept images: add --keep-images")
        if self.alert_webhook and not self.alert_webhook.lower().startswith(
                ("http://", "https://")):
            raise ValueError(f"--alert-webhook must be an http(s) URL, got {self.alert_webhook!r}")
        if self.audit_predictions and not self.audit_log:
            raise ValueError("--audit-predictions needs --audit-log PATH")

    @property
    def retain_s(self) -> float:
        from sightwise.monitor.log import parse_retain

        return parse_retain(self.retain)

    @property
    def log_max_bytes(self) -> int:
        from sightwise.monitor.log import parse_size

        return parse_size(self.log_max_size)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def max_parts(self) -> int:
        """Multipart parts of any kind per request (files and other fields)."""
        return max(2 * self.max_images, 32)

    @property
    def pixels_in_flight(self) -> int:
        return self.max_pixels_in_flight or 2 * self.max_pixels

    def with_(self, **changes) -> ServeSettings:
        """A copy with `changes` (validated again)."""
        return replace(self, **changes)

    def host_allowlist(self) -> frozenset[str] | None:
        """Host names requests may carry (lower case), or None when any is allowed."""
        return host_allowlist(self.host, self.allowed_hosts)

    def public(self) -> dict:
        """The settings for the admin status (no secrets are held here; token_file is a
        path, and this goes only to token holders)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_hosts(text: str | None) -> tuple[str, ...]:
    """'a.example, b.example' -> ('a.example', 'b.example').

    >>> parse_hosts(" models.example ,*.corp.example,"), parse_hosts(None)
    (('models.example', '*.corp.example'), ())
    """
    return tuple(h.strip() for h in (text or "").split(",") if h.strip())
