"""Report: one well-formed, self-contained HTML file with every figure embedded; split
sizes, notes in place of empty figures, and long class names that wrap in a browser."""

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightwise.evaluate.calibration import softmax
from sightwise.evaluate.figures import plot_confusion_matrix
from sightwise.evaluate.metrics import classification_metrics
from sightwise.evaluate.report import Note, image_to_data_uri, write_report

_VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class _TagChecker(HTMLParser):
    """Fails on any end tag that does not close the innermost open element."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.img_srcs, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.img_srcs.append(dict(attrs).get("src", ""))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    checker = _TagChecker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    return checker


def _png(path, color):
    Image.new("RGB", (8, 6), color).save(path, format="PNG")
    return path


@pytest.fixture
def metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    z = rng.normal(size=(90, 3))
    z[np.arange(90), y] += 1.0
    return classification_metrics(y, softmax(z), ["cat", "dog", "<b>fox</b>"], n_boot=100,
                                  probs_uncalibrated=softmax(z * 2))


def test_report_is_self_contained_html(tmp_path, metrics):
    cm_png = plot_confusion_matrix(metrics["confusion_matrix"], ["cat", "dog", "fox"],
                                   tmp_path / "cm.png")
    figs = {"Confusion matrix (test)": cm_png, "Tiny & red": _png(tmp_path / "r.png", "red")}
    out = write_report(
        tmp_path / "out" / "report.html",
        title="Run <1> & co",
        metrics=metrics,
        figures=figs,
        sections=[("Explanations", "<p class='x'>trusted <em>html</em></p>")],
        run_info={"strategy": "finetune", "model": "resnet18",
                  "data_sha256": "ab" * 32, "timing_s": 12.5, "config": {"lr": 0.001}},
    )
    assert out == tmp_path / "out" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parsed = _parse(text)

    assert len(parsed.img_srcs) == 2
    assert all(src.startswith("data:image/png;base64,") for src in parsed.img_srcs)
    decoded = base64.b64decode(parsed.img_srcs[0].split(",", 1)[1])
    assert decoded == cm_png.read_bytes()
    assert Image.open(io.BytesIO(decoded)).format == "PNG"
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", text)

    # Caller text is escaped; the trusted section body is not.
    assert "Run &lt;1&gt; &amp; co" in text and "<1>" not in text
    assert "&lt;b&gt;fox&lt;/b&gt;" in text and "<b>fox</b>" not in text
    assert "<p class='x'>trusted <em>html</em></p>" in text
    body = " ".join(parsed.text)
    for needle in ("resnet18", "finetune", "ab" * 32, "Tiny & red", "Explanations",
                   "Per class", "Macro-F1", "ECE before calibration", "ECE after calibration"):
        assert needle in body
    assert f"{metrics['accuracy']:.3f}" in body
    lo, hi = metrics["accuracy_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in body
    assert f"n = {metrics['n']}" in body
    assert "AUROC (macro one-vs-rest)" in body and "12.5" in body and "0.001" in body
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp left


def test_report_handles_missing_values_and_overwrites(tmp_path, metrics):
    metrics = dict(metrics, auroc=None, accuracy_ci=None)
    path = tmp_path / "report.html"
    path.write_text("old")
    write_report(path, title="t", metrics=metrics, figures={})
    text = path.read_text(encoding="utf-8")
    _parse(text)
    assert "n/a" in text and "old" not in text
    assert "<img" not in text
    # Same inputs give the same bytes: nothing time-dependent is written.
    first = path.read_bytes()
    write_report(path, title="t", metrics=metrics, figures={})
    assert path.read_bytes() == first


def test_image_to_data_uri(tmp_path):
    png = _png(tmp_path / "a.png", "blue")
    uri = image_to_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes()
    jpg = tmp_path / "b.png"  # wrong suffix on purpose: content decides the type
    Image.new("RGB", (4, 4)).save(jpg, format="JPEG")
    assert image_to_data_uri(jpg).startswith("data:image/jpeg;base64,")
    bad = tmp_path / "c.png"
    bad.write_text("<script>alert(1)</script>")
    with pytest.raises(ValueError):
        image_to_data_uri(bad)


LONG = "Extremely_long_class_name_for_a_very_specific_defect_type_60"
SPLITS = {"test": {"cat": 2, LONG: 3}, "train": {"cat": 10, LONG: 9}, "val": {"cat": 2, LONG: 1}}


def test_split_sizes_per_split_and_class_with_totals(tmp_path, metrics):
    out = write_report(tmp_path / "r.html", title="t", metrics=metrics, figures={}, splits=SPLITS)
    text = out.read_text(encoding="utf-8")
    _parse(text)
    assert "Data: images per split (train 19, val 3, test 5)" in text
    table = text[text.index("Data: images per split"):text.index("Headline metrics")]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", table)]
    assert cells == ["Class", "train", "val", "test", "all",  # train, val, test in that order
                     "cat", "10", "2", "2", "14",
                     LONG, "9", "1", "3", "13",
                     "all classes", "19", "3", "5", "27"]
    assert "Extremely_<wbr>long_<wbr>class" in table  # the browser may break after "_"


def test_a_note_takes_an_empty_figure_s_place(tmp_path, metrics):
    cm = plot_confusion_matrix(metrics["confusion_matrix"], ["cat", "dog", "fox"], tmp_path / "cm.png")
    out = write_report(tmp_path / "r.html", title="t", metrics=metrics, figures={
        "Training curves": Note("a linear probe has no <curve>."), "Confusion matrix": cm,
        "Most confident mistakes (test)": Note("no mistakes on the test split (n = 90).")})
    text = out.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert len(parsed.img_srcs) == 1  # only the real figure is an image
    body = re.sub(r"\s+", " ", "".join(parsed.text))
    assert "Most confident mistakes (test): no mistakes on the test split (n = 90)." in body
    assert "a linear probe has no &lt;curve&gt;." in text
    # in the order given: the note, the figure, the note
    assert text.index("Training curves") < text.index("Confusion matrix") < text.index("no mistakes")


CHROMIUM = os.environ.get("SIGHTWISE_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_long_class_names_wrap_in_a_browser(tmp_path):
    """Rendered at a phone-ish 700 px width, no table with 60-character class names is wider
    than the page: the names wrap inside their cells (and nothing is cut)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    names = [LONG, LONG.replace("60", "61"), "cat"]
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    m = classification_metrics(y, softmax(rng.normal(size=(30, 3)) + np.eye(3)[y] * 2), names,
                               n_boot=50)
    out = write_report(tmp_path / "r.html", title="t", metrics=m, figures={},
                       splits={"train": dict.fromkeys(names, 5), "test": dict.fromkeys(names, 10)})
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 700, "height": 900})
            page.goto(out.as_uri())
            widths = page.evaluate("""() => [...document.querySelectorAll('table')].map(
                t => [t.getBoundingClientRect().right, document.body.getBoundingClientRect().right])""")
            texts = page.evaluate("() => [...document.querySelectorAll('td')].map(c => c.innerText)")
        finally:
            browser.close()
    assert all(right <= body + 1 for right, body in widths), widths
    shown = [t.replace("\n", "") for t in texts]
    assert shown.count(LONG) == 2  # per-class table and split table, whole
