"""The labelling page in headless Chromium (Playwright, Debian's /usr/bin/chromium), against
the real `sightwise label` command: keys, undo, history, two annotators, restart after
kill -9. A screenshot is kept under test-artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sightwise.label.store import SKIP, UNDO, final_labels, read_answers

CHROMIUM = os.environ.get("SIGHTWISE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
CLASSES = "red,green,blue"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, server, annotator, errors=None):
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    page = ctx.new_page()
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server.url}/?annotator={annotator}#token=label-live-token-0123456789")
    wait_for_item(page)
    return page


def wait_for_item(page, not_path=None):
    """Wait until an image is shown (and, with not_path, until it is another one)."""
    page.wait_for_function(
        "([p]) => { const c = document.getElementById('caption').textContent;"
        " const i = document.getElementById('image');"
        " return c && !i.hidden && i.naturalWidth > 0 && (!p || !c.startsWith(p + ' '));}",
        arg=[not_path or ""], timeout=20_000)
    return current_path(page)


def current_path(page) -> str:
    return page.locator("#caption").inner_text().split(" · ")[0]


def test_keys_undo_history_and_progress(browser, pool_dir, tmp_path, label_server):
    out = tmp_path / "labels.csv"
    server = label_server(pool_dir, out, "--classes", CLASSES, "--order", "random")
    errors: list[str] = []
    page = open_page(browser, server, "ann", errors)
    assert not page.evaluate("location.hash")  # the token is taken out of the address bar

    first = current_path(page)
    page.keyboard.press("1")                        # red
    second = wait_for_item(page, first)
    page.keyboard.press("3")                        # blue
    third = wait_for_item(page, second)
    page.keyboard.press("u")                        # undo: the second image comes back
    wait_for_item(page, third)
    assert current_path(page) == second
    expect(page.locator("#caption")).to_contain_text("not labelled yet")
    page.keyboard.press("2")                        # green this time
    wait_for_item(page, second)

    page.keyboard.press("ArrowLeft")                # history: second (green)
    expect(page.locator("#where")).to_contain_text("History 2 of 2")
    expect(page.locator("#caption")).to_contain_text(f"{second} · labelled green")
    page.keyboard.press("ArrowLeft")                # first (red)
    expect(page.locator("#caption")).to_contain_text(f"{first} · labelled red")
    page.keyboard.press("3")                        # relabel it blue, stay in history
    expect(page.locator("#caption")).to_contain_text(f"{first} · labelled blue")
    page.keyboard.press("Escape")                   # back to the queue
    expect(page.locator("#where")).to_contain_text("Next in the queue")
    now = current_path(page)
    page.get_by_role("button", name="Skip").click()  # the mouse works too
    wait_for_item(page, now)
    expect(page.locator("#progress")).to_contain_text("2 labelled")
    expect(page.locator("#progress")).to_contain_text("1 skipped")
    expect(page.locator("#per-class")).to_contain_text("blue: 1")

    rows = read_answers(out)
    assert [r.label for r in rows] == ["red", "blue", UNDO, "green", "blue", SKIP]
    assert final_labels(rows) == {f"pool/{first}": "blue", f"pool/{second}": "green"}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "label-page.png"))
    assert not errors, errors
    page.context.close()


def test_two_annotators_get_different_images(browser, pool_dir, tmp_path, label_server):
    server = label_server(pool_dir, tmp_path / "labels.csv", "--classes", CLASSES)
    alice, bob = open_page(browser, server, "alice"), open_page(browser, server, "bob")
    shown = {"alice": [current_path(alice)], "bob": [current_path(bob)]}
    for _ in range(3):
        for name, page in (("alice", alice), ("bob", bob)):
            page.keyboard.press("1")
            shown[name].append(wait_for_item(page, shown[name][-1]))
    assert not set(shown["alice"]) & set(shown["bob"]), shown
    progress = server.api("GET", "/v1/label/progress").json()
    assert progress["per_annotator"] == {"alice": 3, "bob": 3}
    for page in (alice, bob):
        page.context.close()
    assert server.stop() == 0  # SIGTERM: a clean stop that says where the answers are
    assert "6 labelled, 0 skipped, 6 still queued" in server.log.read_text()


def test_restart_after_kill_9_resumes(browser, pool_dir, tmp_path, label_server):
    out = tmp_path / "labels.csv"
    server = label_server(pool_dir, out, "--classes", CLASSES)
    page = open_page(browser, server, "ann")
    done = [current_path(page)]
    for key in ("1", "2", "3"):
        page.keyboard.press(key)
        done.append(wait_for_item(page, done[-1]))
    labelled = done[:3]
    page.context.close()
    assert server.kill() == -9

    server2 = label_server(pool_dir, out, "--classes", CLASSES)
    page = open_page(browser, server2, "ann")
    expect(page.locator("#progress")).to_contain_text("3 labelled")
    assert current_path(page) not in labelled
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#caption")).to_contain_text(f"{labelled[-1]} · labelled blue")
    page.context.close()


def test_the_models_guesses_and_enter(browser, exported, texture_pool, tmp_path, label_server):
    """With --bundle: the page shows the model's top 3 with probabilities, Enter answers the
    first guess, and the row records the guess, its probability and the model version."""
    from sightwise.serve.swap import local_version

    out = tmp_path / "labels.csv"
    server = label_server(texture_pool, out, "--bundle", str(exported[0]))
    page = open_page(browser, server, "ann")
    guesses = page.locator("#suggestions li")
    expect(guesses).to_have_count(3)
    first_guess = guesses.first.locator(".label").inner_text()
    shown_p = float(guesses.first.locator(".value").inner_text())
    first = current_path(page)
    page.keyboard.press("Enter")
    wait_for_item(page, first)
    (row,) = read_answers(out)
    assert (row.path.split("/")[-1], row.label, row.suggested) == (first, first_guess, first_guess)
    assert row.suggested_p == pytest.approx(shown_p, abs=0.006)
    assert row.model_version == local_version(exported[0])
    assert server.api("GET", "/v1/label/progress").json()["last_pick"] == "typical k-center"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "label-page-guesses.png"))
    page.context.close()
