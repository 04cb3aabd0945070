"""Take the README's screenshot of the web page: docs/figures/page.png.

    sightwise demo --out runs/demo                  # once: a bundle to serve
    python docs/screenshots.py [--bundle runs/demo/bundle] [--out docs/figures/page.png]

Starts `sightwise serve` on a free loopback port, opens the page in headless Chromium
(Playwright driving Debian's /usr/bin/chromium, or $SIGHTWISE_CHROMIUM; the launch flags of
tests/serve/test_page.py), picks an image with the page's file input (default: the demo's
first brick tile, a test-split image: `RUN/data/brick/brick_000.png` beside the bundle),
waits until every request the page made has answered and every image on it has loaded, and
saves a full-page screenshot. Re-run it whenever the page changes. Needs the `dev` extra
(playwright) and Chromium.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SIGHTWISE_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, log) -> subprocess.Popen:
    """`sightwise serve` as a user runs it, from this checkout's source; waits for /readyz."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.Popen([sys.executable, "-m", "sightwise.cli", "serve", "--bundle",
                             str(bundle), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sightwise serve exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"server not ready after {TIMEOUT_S:.0f} s; see {log.name}")


def settle(page, in_flight: list[int]) -> None:
    """Wait (bounded) until no request is open and every <img> has decoded."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        images_done = page.evaluate(
            "[...document.images].every(i => i.closest('[hidden]') || "
            "(i.complete && (!i.getAttribute('src') || i.naturalWidth > 0)))")
        if in_flight[0] == 0 and images_done:
            return
    raise SystemExit("the page did not settle within the timeout")


def screenshot(url: str, image: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            in_flight = [0]
            page.on("request", lambda r: in_flight.__setitem__(0, in_flight[0] + 1))
            for event in ("requestfinished", "requestfailed"):
                page.on(event, lambda r: in_flight.__setitem__(0, in_flight[0] - 1))
            page.goto(url)
            settle(page, in_flight)
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.wait_for_timeout(500)  # let the page's fetches start
            settle(page, in_flight)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp.png")
            page.screenshot(path=str(tmp), full_page=True)
            os.replace(tmp, out)  # atomic: a failed run leaves the old figure
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    ap.add_argument("--image", type=Path, help="image to upload (default: the demo's "
                    "RUN/data/brick/brick_000.png)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "page.png")
    args = ap.parse_args(argv)
    image = args.image or args.bundle.parent / "data" / "brick" / "brick_000.png"
    if not image.is_file():
        raise SystemExit(f"{image}: no such image (pass --image)")
    if not (args.bundle / "bundle.json").is_file():
        raise SystemExit(f"{args.bundle}: no bundle; run `sightwise demo --out runs/demo` first")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with open(Path(tmp) / "server.log", "wb") as log:
            proc = start_server(args.bundle, port, log)
            try:
                screenshot(f"http://127.0.0.1:{port}/", image, args.out)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
