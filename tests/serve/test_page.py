"""The web page in headless Chromium (Playwright, Debian's /usr/bin/chromium): pick a file
with the keyboard-reachable <input type=file>, see the class the API predicts for the same
image, the overlay and the model version. A screenshot is kept under test-artifacts/."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from sw_serve_helpers import files

CHROMIUM = os.environ.get("SIGHTWISE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_upload_shows_the_prediction_overlay_and_version(browser, live_server, served_bundle,
                                                         sample_images, tmp_path):
    server = live_server(bundle=str(served_bundle))
    name, data = sample_images[3]
    expected = httpx.post(server.url + "/v1/predict", files=files((name, data)),
                          timeout=30).json()
    label = expected["results"][0]["predictions"][0]["label"]
    version = str(expected["model"]["version"])
    image = tmp_path / name
    image.write_bytes(data)

    page = browser.new_page(viewport={"width": 900, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url)
            if not r.url.startswith((server.url, "blob:", "data:")) else None)
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#model-status")).to_contain_text(version)

    # Keyboard: the file input is reachable with Tab and has an accessible label.
    file_input = page.get_by_label("Choose an image")
    for _ in range(10):
        if page.evaluate("document.activeElement && document.activeElement.id") == "file-input":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    file_input.set_input_files(str(image))

    status = page.locator("#status")
    sync_api.expect(status).to_contain_text(f"Predicted: {label}", timeout=15_000)
    assert page.get_attribute("#results", "aria-live") == "polite"
    items = page.locator("#predictions li")
    assert items.count() == len(expected["results"][0]["predictions"])
    assert items.first.locator(".label").inner_text() == label
    sync_api.expect(page.locator("#answered-by")).to_contain_text(f"version {version}")
    overlay = page.locator("#overlay")
    sync_api.expect(overlay).to_be_visible(timeout=15_000)
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
    assert label in overlay.get_attribute("alt")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    assert not external, f"the page fetched external resources: {external}"
    page.close()


def test_a_bad_upload_is_announced(browser, live_server, served_bundle, tmp_path):
    server = live_server(bundle=str(served_bundle))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page = browser.new_page()
    page.goto(server.url + "/")
    page.get_by_label("Choose an image").set_input_files(str(bad))
    alert = page.get_by_role("alert")
    sync_api.expect(alert).to_contain_text("not an image", timeout=15_000)
    page.close()


def test_a_served_detector_shows_verdict_and_heat_map(browser, live_server, served_bundle,
                                                      tmp_path):
    """With --detector the page adds the inspection: the verdict /v1/inspect gives for the
    same image, and its overlay at the image's own size."""
    from sw_anomaly_data import fit_small_detector, write_inspection_data

    data = write_inspection_data(tmp_path / "data", n_good=16, n_test_good=1, n_defect=1)
    detector = fit_small_detector(data, tmp_path / "detector")
    server = live_server(bundle=str(served_bundle), detector=str(detector))
    defect = next((data["defect"] / "blob").iterdir())
    expected = httpx.post(server.url + "/v1/inspect", content=defect.read_bytes(), timeout=30).json()

    page = browser.new_page(viewport={"width": 900, "height": 1400})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.get_by_label("Choose an image").set_input_files(str(defect))
    status = page.locator("#inspect-status")
    sync_api.expect(status).to_contain_text(f"Verdict: {expected['verdict']}", timeout=20_000)
    assert status.get_attribute("data-verdict") == expected["verdict"]
    shown = re.search(r"anomaly score ([-+.\deE]+), threshold ([-+.\deE]+)", status.inner_text())
    assert float(shown[1]) == pytest.approx(expected["score"], rel=1e-3)
    assert float(shown[2]) == pytest.approx(expected["threshold"], rel=1e-3)
    page.wait_for_function("document.getElementById('inspect-overlay').naturalWidth > 0")
    size = page.evaluate("[document.getElementById('inspect-overlay').naturalWidth,"
                         " document.getElementById('inspect-overlay').naturalHeight]")
    assert size == [expected["width"], expected["height"]]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-detector.png"), full_page=True)
    assert not errors, errors
    page.close()
