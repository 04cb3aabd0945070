"""The web page's similar-images grid in headless Chromium: upload a tile, see the indexed
tiles /v1/search answers (label, path, similarity), in the same order."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("SIGHTWISE_CHROMIUM", "/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")]


@pytest.fixture
def server_url(search_bundle, texture_index):
    import uvicorn

    from sightwise.serve.app import create_app
    from sightwise.serve.settings import ServeSettings

    app = create_app(ServeSettings(bundle=str(search_bundle), index=str(texture_index),
                                   threads=1, workers=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(10)


def test_grid_shows_the_search_answer(server_url, texture_data):
    img = sorted(texture_data.rglob("*.png"))[40]
    expected = httpx.post(server_url + "/v1/search?k=8",
                          files={"file": (img.name, img.read_bytes(), "image/png")},
                          timeout=30).json()["matches"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server_url + "/")
        page.get_by_label("Choose an image").set_input_files(str(img))
        tiles = page.locator("#similar li")
        sync_api.expect(tiles).to_have_count(len(expected), timeout=20_000)
        for i, m in enumerate(expected):
            text = tiles.nth(i).inner_text()
            assert m["label"] in text and f"{m['similarity']:.3f}" in text
        browser.close()
