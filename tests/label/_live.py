"""A real `sightwise label` server in a subprocess (the CLI command itself), on a free
loopback port; `stop()` terminates it, `kill()` sends SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN = "label-live-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelServer:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def page(self) -> str:
        return f"{self.url}/#token={TOKEN}"

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=30, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=30)


def start(tmp: Path, pool: Path, out: Path, *args: str) -> LabelServer:
    port = free_port()
    token_file = tmp / "token.txt"
    token_file.write_text(TOKEN)
    log = tmp / f"label-{port}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "sightwise.cli", "label", str(pool), "--out", str(out),
           "--port", str(port), "--token-file", str(token_file), *args]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    server = LabelServer(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"label server did not start: {log.read_text()[-2000:]}")
