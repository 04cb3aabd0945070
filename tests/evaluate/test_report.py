"""Report: one well-formed, self-contained HTML file with every figure embedded."""

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sightwise.evaluate.calibration import softmax
from sightwise.evaluate.figures import plot_confusion_matrix
from sightwise.evaluate.metrics import classification_metrics
from sightwise.evaluate.report import image_to_data_uri, write_report

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
