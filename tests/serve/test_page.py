"""The web page in headless Chromium (Playwright, Debian's /usr/bin/chromium): pick a file
with the keyboard-reachable <input type=file>, see the class the API predicts for the same
image, the image beside its heat map (with the legend), the model's readable label with
its exact version at hand, and long class names wrapped, never cut or overflowing.
Screenshots are kept under test-artifacts/."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sw_serve_helpers import AUTH, TOKEN, bundle_version, encode, files

from sightwise.bundle import load_bundle, write_bundle_meta

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


def test_upload_shows_the_prediction_the_image_beside_its_heat_map_and_the_model(
        browser, live_server, served_bundle, sample_images, tmp_path):
    server = live_server(bundle=str(served_bundle))
    name, data = sample_images[3]
    expected = httpx.post(server.url + "/v1/predict", files=files((name, data)),
                          timeout=30).json()
    label = expected["results"][0]["predictions"][0]["label"]
    version = str(expected["model"]["version"])
    model = server.get("/v1/model").json()
    image = tmp_path / name
    image.write_bytes(data)

    page = browser.new_page(viewport={"width": 900, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url)
            if not r.url.startswith((server.url, "blob:", "data:")) else None)
    page.goto(server.url + "/")
    # The readable label up front; the exact version beside it, small.
    sync_api.expect(page.locator("#model-label")).to_have_text(f"Model: {model['label']}")
    assert version not in page.inner_text("#model-label")
    sync_api.expect(page.locator("#model-version")).to_have_text(f"version {version}")

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
    answered = page.locator("#answered-by")
    sync_api.expect(answered).to_contain_text(f"Answered by {model['label']}")
    assert answered.get_attribute("data-version") == version
    assert version in answered.get_attribute("title")

    # The image and its heat map side by side, equally wide, tops aligned.
    overlay, original = page.locator("#overlay"), page.locator("#original")
    sync_api.expect(overlay).to_be_visible(timeout=15_000)
    sync_api.expect(original).to_be_visible()
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
    page.wait_for_function("document.getElementById('original').naturalWidth > 0")
    a, b = original.bounding_box(), overlay.bounding_box()
    assert a["x"] + a["width"] <= b["x"] and a["y"] == pytest.approx(b["y"], abs=1)
    assert a["width"] == pytest.approx(b["width"], abs=1)
    assert b["height"] > a["height"]  # the heat map carries its colour legend below
    assert label in overlay.get_attribute("alt")
    assert "less" in page.inner_text("#overlay-caption")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    assert not external, f"the page fetched external resources: {external}"
    page.close()


def test_long_class_names_wrap_inside_the_page(browser, live_server, served_bundle,
                                               sample_images, tmp_path):
    """Class names of 80+ characters without spaces, on a phone-sized screen: every name is
    shown in full (wrapped), and nothing makes the page scroll sideways."""
    long_names = tmp_path / "long-names"
    bundle_version(served_bundle, long_names, 1.0)
    meta = load_bundle(long_names).meta.to_dict()
    meta["classes"] = [f"{c}_observed_under_the_{c}_inspection_protocol_of_the_plant_number_{i}"
                       for i, c in enumerate(meta["classes"])]
    meta.pop("files")
    write_bundle_meta(long_names, meta)
    server = live_server(bundle=str(long_names))
    name, data = sample_images[1]
    (tmp_path / name).write_bytes(data)
    page = browser.new_page(viewport={"width": 400, "height": 900})
    page.goto(server.url + "/")
    page.get_by_label("Choose an image").set_input_files(str(tmp_path / name))
    labels = page.locator("#predictions li .label")
    sync_api.expect(labels.first).to_be_visible(timeout=15_000)
    sync_api.expect(page.locator("#overlay")).to_be_visible(timeout=15_000)
    for i in range(labels.count()):
        text = labels.nth(i).inner_text().replace("\n", "")
        assert text in meta["classes"], text  # whole, not cut
        assert labels.nth(i).evaluate("e => e.scrollWidth <= e.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.locator("#class-summary").click()
    assert page.locator("#class-list li").count() == len(meta["classes"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-long-names.png"), full_page=True)
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
                                                      serve_detector):
    """With --detector the page adds the inspection: the verdict /v1/inspect gives for the
    same image, and its heat map with the colour legend below it."""
    detector, data = serve_detector
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
    width, height = page.evaluate("[document.getElementById('inspect-overlay').naturalWidth,"
                                  " document.getElementById('inspect-overlay').naturalHeight]")
    # The image enlarged to the figure width (320 px for this small one), legend below.
    assert width == max(320, expected["width"])
    assert height > width * expected["height"] / expected["width"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-detector.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_with_a_token_the_page_shows_the_drift_chart(browser, live_server, monitored_bundle,
                                                     sw_base, tmp_path):
    """The drift monitor is for token holders: hidden without one; with it, the status of
    the last window (an alert, after a clean window and two noisy ones) and the chart."""
    import numpy as np

    from sightwise.data.decode import decode_image

    server = live_server(bundle=str(monitored_bundle), monitor_window=10,
                         log_dir=str(tmp_path / "log"), env={"SIGHTWISE_TOKEN": TOKEN})
    paths = sorted((sw_base / "data").glob("*/*.png"))
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in rng.permutation(len(paths))[:30]]
    for i, path in enumerate(paths):
        data = path.read_bytes()
        if i >= 10:  # the last 20 under heavy noise: two drifted windows, an alert
            a = np.asarray(decode_image(data)).astype(float) + rng.normal(0, 90, (40, 40, 3))
            data = encode(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), "PNG")
        assert httpx.post(server.url + "/v1/predict", files=files((path.name, data)),
                          timeout=30).status_code == 200
    deadline = time.monotonic() + 60
    while len(server.get("/v1/monitor", headers=AUTH).json()["windows"]) < 3:
        assert time.monotonic() < deadline, "three windows not tested in time"
        time.sleep(0.1)

    page = browser.new_page(viewport={"width": 900, "height": 1400})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.get_by_text("Access token").click()  # open the <details> holding the field
    assert page.locator("#monitor-section").is_hidden()
    page.get_by_label("Bearer token").fill(TOKEN)
    page.get_by_label("Bearer token").press("Tab")  # the change event
    status = page.locator("#monitor-status")
    sync_api.expect(status).to_contain_text("3 window(s) of 10 predictions", timeout=20_000)
    sync_api.expect(status).to_contain_text("ALERT")
    assert status.get_attribute("data-alert") == "yes"
    sync_api.expect(page.locator("#monitor-chart")).to_be_visible(timeout=20_000)
    page.wait_for_function("document.getElementById('monitor-chart').naturalWidth > 0")
    assert page.evaluate("document.getElementById('monitor-chart').naturalWidth") == 560
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#monitor-section").screenshot(path=str(ARTIFACTS / "serve-page-monitor.png"))
    assert not errors, errors
    page.close()
