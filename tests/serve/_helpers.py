"""Helpers for tests/serve (conftest.py loads this file by path and registers it as the
module `sw_serve_helpers`, because with --import-mode=importlib tests cannot import
conftest): uploads, bundle versions, apps and clients, a real server in a subprocess, a
fake registry.

The subprocess server is started through `serve_main`, the function `sightwise serve`
calls. `--model` tests put a file-backed stand-in for `sightwise.registry.resolve` into
`sys.modules` before `serve_main` imports it, so the watch path runs for real.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from sightwise.bundle import load_bundle, write_bundle_meta
from sightwise.serve.app import create_app
from sightwise.serve.settings import ServeSettings

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The Host a browser sends to a loopback server (TestClient's default "testserver" is
# not an allowed Host).
LOCAL = "http://127.0.0.1:8000"


def app_for(bundle=None, **settings):
    """create_app for `bundle` with ServeSettings(**settings); `token`, `watch` and
    `observers` go to create_app. The prediction log (on by default in the product) is off
    unless a test asks for it (`log=True`): these in-process apps are many and short-lived;
    tests/monitor/test_serve_log.py tests the log, and the subprocess servers keep it on."""
    extra = {k: settings.pop(k) for k in ("token", "watch", "observers") if k in settings}
    settings.setdefault("log", False)
    return create_app(ServeSettings(bundle=str(bundle) if bundle else None, **settings), **extra)


def client_for(app) -> TestClient:
    """A TestClient that talks to `app` as a browser on this machine would."""
    return TestClient(app, base_url=LOCAL)


def bundle_version(src: Path, dst: Path, temperature: float) -> Path:
    """A re-hashed copy of `src` with another calibration temperature: same classes, other
    probabilities, so a response shows which version computed it."""
    shutil.copytree(src, dst)
    meta = load_bundle(dst).meta.to_dict()
    meta["calibration"] = {**meta.get("calibration", {}), "temperature": float(temperature)}
    meta.pop("files")
    write_bundle_meta(dst, meta)
    return dst


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def files(*images: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in images]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_SCRIPT = r"""
import json, sys, types
cfg = json.loads(sys.argv[1])
reg = cfg.pop("registry_file", None)
if reg:
    seen = {}  # version -> folder, as the registry keeps every version's folder
    def _read():
        with open(reg) as f:
            d = json.load(f)
        if d:
            seen[d["version"]] = d["path"]
        return d
    def current_version(name, alias):
        d = _read()
        return (d["version"], d["path"]) if d else None
    def resolve_bundle(ref):  # NAME/VERSION: the path the registry file names
        return _read()["path"]
    def open_version(name, version):  # the registered version, verified as loading does
        from sightwise.bundle import load_bundle
        if version not in seen:
            _read()
        return load_bundle(seen[version])
    mod = types.ModuleType("sightwise.registry.resolve")
    mod.current_version, mod.resolve_bundle = current_version, resolve_bundle
    mod.open_version = open_version
    sys.modules["sightwise.registry.resolve"] = mod
from sightwise.serve.runner import serve_main
serve_main(**cfg)
"""


@dataclass
class LiveServer:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-3000:]


def start_server(workdir: Path, *, registry_file: Path | None = None, env: dict | None = None,
                 **kwargs) -> LiveServer:
    """serve_main(**kwargs) on a free loopback port in a subprocess (its output in
    `workdir`); waits for /readyz."""
    port = free_port()
    cfg = {"host": "127.0.0.1", "port": port, "log_level": "warning", **kwargs}
    if cfg.get("log", True) and "log_dir" not in cfg:
        # The prediction log stays on (the product's default) but in the test's folder: a
        # module-scoped server starts before the per-test $SIGHTWISE_HOME is set.
        cfg["log_dir"] = str(workdir / f"predictions-{port}")
    if registry_file is not None:
        cfg["registry_file"] = str(registry_file)
    log = workdir / f"server-{port}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, json.dumps(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if server.get("/readyz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after 90 s:\n{server.log_tail()}")


def write_registry(path: Path, version: int | None, bundle: Path | None) -> None:
    """Atomically point the fake registry's alias at (version, bundle)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "path": str(bundle)} if version else None))
    os.replace(tmp, path)


# A load generator cheap enough to overload the server from the same 2 cores: raw
# keep-alive HTTP/1.1 on asyncio streams, one pre-built request (an httpx client spends
# more CPU per request than the server does answering 503).
FLOOD_SCRIPT = r"""
import asyncio, json, re, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds, conc = float(sys.argv[4]), int(sys.argv[5])
data = open(path, "rb").read()
body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
req = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
       f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
       ).encode() + body
counts = {}
async def client(stop):
    conn = None
    while time.monotonic() < stop:
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
            reader, writer = conn
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            counts[status] = counts.get(status, 0) + 1
            if re.search(rb"(?i)\r\nconnection: *close", head):
                writer.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError) as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
            conn = None
async def main():
    stop = time.monotonic() + seconds
    await asyncio.gather(*(client(stop) for _ in range(conc)))
asyncio.run(main())
print(json.dumps(counts))
"""


def flood(url: str, image: Path, seconds: float, concurrency: int) -> subprocess.Popen:
    """Start overloading `url` in a subprocess; `.communicate()[0]` is JSON status counts."""
    host, port = url.split("//")[1].split(":")
    return subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, host, port, str(image),
                             str(seconds), str(concurrency)], stdout=subprocess.PIPE, text=True)
