"""The live half of bench/closed_loop.py: a `sightwise serve` process, the traffic sent to
it, the monitor's labelling queue, and the labelling session that answers it.

The server is the real command (`sightwise serve --model NAME@production --log DIR
--keep-images ...`) in a child process, bound to 127.0.0.1 on a free port, with
SIGHTWISE_HOME pointing at the bench's store; it is always stopped (SIGTERM, then kill)
and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

SERVING = re.compile(r"on http://127\.0\.0\.1:(\d+)")


class Server:
    """`sightwise serve` in a child process; use as a context manager."""

    def __init__(self, model: str, log_dir: Path, out_file: Path, *, shadow: str | None = None,
                 window: int = 100, watch_s: float = 1.0):
        self.token = secrets.token_hex(16)
        self.args = ["serve", "--model", model, "--log", str(log_dir), "--keep-images",
                     "--host", "127.0.0.1", "--port", "0", "--monitor-window", str(window),
                     "--watch-interval", str(watch_s), "--log-level", "info"]
        if shadow:
            self.args += ["--shadow", shadow]
        self.out_file, self.proc, self.url = out_file, None, None

    def __enter__(self) -> Server:
        import httpx

        env = {**os.environ, "SIGHTWISE_TOKEN": self.token}
        with open(self.out_file, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from sightwise.cli import app; app()", *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            port = self._wait_for(SERVING, 180)
            self.url = f"http://127.0.0.1:{port}"
            self.client = httpx.Client(base_url=self.url, timeout=60)
            deadline = time.monotonic() + 60
            while self.client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not become ready in 60 s")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for(self, pattern: re.Pattern, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = pattern.search(self.out_file.read_text(errors="replace"))
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.out_file}")
            time.sleep(0.3)
        raise RuntimeError(f"the server did not start in {timeout_s:.0f} s; see {self.out_file}")

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: in-flight answers, log flushed
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        self.stop()

    def predict(self, path: Path) -> dict:
        """One image through POST /v1/predict: status, served version, top label."""
        try:
            r = self.client.post("/v1/predict", params={"top_k": 1},
                                 files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        except Exception as exc:  # noqa: BLE001 - a transport failure is a failed request
            return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
        if r.status_code != 200:
            return {"status": r.status_code, "error": r.text[:200]}
        body = r.json()
        preds = body["results"][0]["predictions"]
        return {"status": 200, "version": body["model"]["version"],
                "label": preds[0]["label"] if preds else None}

    def monitor(self) -> dict:
        r = self.client.get("/v1/monitor", params={"last": 500},
                            headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def version(self):
        return self.client.get("/v1/model").json().get("version")


def stream(server: Server, items: list[tuple[Path, str]], *, until=None) -> list[dict]:
    """Send images one request at a time (live traffic), each answer with its truth; stop
    early when `until(answers)` says so."""
    answers = []
    for path, truth in items:
        answers.append({**server.predict(path), "truth": truth, "path": str(path)})
        if until is not None and until(answers):
            break
    return answers


def tally(answers: list[dict]) -> dict:
    """Per served version: requests answered, true accuracy; and the failed requests."""
    out: dict = {"failed": sum(a["status"] != 200 for a in answers), "by_version": {}}
    for v in sorted({str(a["version"]) for a in answers if a["status"] == 200}):
        ok = [a for a in answers if a["status"] == 200 and str(a["version"]) == v]
        out["by_version"][v] = {"n": len(ok),
                                "accuracy": sum(a["label"] == a["truth"] for a in ok) / len(ok)}
    out["statuses"] = dict(Counter(str(a["status"]) for a in answers))
    return out


def windows_of(summary: dict) -> list[dict]:
    return [w for w in summary.get("windows", []) if w.get("estimated_accuracy") is not None]


def wait_for(check, timeout_s: float, every_s: float = 0.5):
    """Poll `check()` until it returns something truthy, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    return None


# -- the labelling queue ---------------------------------------------------------------------


def alert_folders(queue_dir: Path) -> list[Path]:
    """The monitor's finished alert folders (hidden ones are still being written)."""
    if not queue_dir.is_dir():
        return []
    return sorted(p for p in queue_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "items.jsonl").is_file())


def label_pool(pool, labels_csv: Path, classes: list[str], truth: dict[str, str], *,
               annotator: str, corrupt: bool = False) -> Counter:
    """The simulated annotator works through the labelling session like a person would:
    `next_item`, look at the image (it knows the truth by the file's sha256), `answer`.
    With `corrupt`, half the images (by a hash of the sha256) get the next class instead."""
    from sightwise.label.session import LabelSession
    from sightwise.label.store import LabelStore

    counts: Counter = Counter()
    with LabelStore(labels_csv) as store:
        session = LabelSession(pool, store, classes, order="queue", log=lambda m: print(f"    {m}"))
        for _ in range(len(pool) + 1):  # bounded: each answer takes one image off the queue
            item = session.next_item(annotator)
            if item is None:
                break
            path = session.image_path(item["id"])
            sha = pool.items[item["id"]].meta.get("sha256") or path.stem
            label = truth.get(sha)
            if label is None:  # kept bytes differ from the upload: read the file itself
                label = truth.get(hashlib.sha256(path.read_bytes()).hexdigest())
            if label is None:
                session.skip(annotator, item["id"])
                counts["skipped (truth unknown)"] += 1
                continue
            if corrupt and hashlib.sha256(sha.encode()).digest()[0] % 2 == 1:
                label = classes[(classes.index(label) + 1) % len(classes)]
                counts["corrupted"] += 1
            session.answer(annotator, item["id"], label)
            counts["answered"] += 1
        counts["pool"] = len(pool)
    return counts
