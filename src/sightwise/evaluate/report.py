"""A single self-contained HTML evaluation report.

One file, no network: styles are inline and every figure is a base64 ``data:`` URI, so the
report opens the same on an air-gapped laptop, inside a bundle, or attached to a ticket.
All text we are given is HTML-escaped; only ``sections`` bodies are inserted raw, because
the caller builds them (trusted HTML). No timestamp is written, so the same run gives a
byte-identical report (DESIGN.md principle 4).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sightwise

# Magic numbers, not file suffixes, decide the MIME type: a mislabelled file must not be
# embedded under a type the browser would then refuse or misinterpret.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.3rem .7rem;text-align:left;vertical-align:top}
td:first-child{max-width:24rem;overflow-wrap:anywhere}
th{background:#f6f8fa}
tr.total td{font-weight:600;background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9rem}
p.note{margin:1rem 0;padding:.5rem .8rem;border-left:3px solid #d0d7de;background:#f6f8fa}
p.warn{border-left-color:#bf8700;background:#fff8c5}
code{white-space:pre-wrap;font-size:.85rem}
footer{margin-top:3rem;color:#57606a;font-size:.8rem}
"""


@dataclass(frozen=True)
class Note:
    """A figure's place in the report taken by a sentence: what there was not to draw
    (no mistakes, no training curve) is said, not drawn as an empty box."""

    text: str


def image_to_data_uri(path: str | Path) -> str:
    """Read an image file and return it as a ``data:<mime>;base64,...`` URI.

    PNG, JPEG and GIF are recognised by their magic bytes; anything else raises.
    """
    data = Path(path).read_bytes()
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    raise ValueError(f"{path}: not a PNG, JPEG or GIF image")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _name(value: object) -> str:
    """A class name as cell HTML: escaped, with a line-break opportunity after each
    underscore, so a long snake_case name wraps between its words."""
    return _esc(value).replace("_", "_<wbr>")


def _fmt(value: object) -> str:
    """Format one metric value as escaped HTML text: 3 decimals, 'n/a' for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return _esc(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return _esc(value)


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1,
           total: list[str] | None = None) -> str:
    """Rows hold already-escaped cell HTML; columns from ``numeric_from`` align right;
    ``total`` is a last row set apart (sums)."""
    def row_html(row: list[str], cls: str = "") -> str:
        return f"<tr{cls}>" + "".join(
            f'<td class="num">{c}</td>' if j >= numeric_from else f"<td>{c}</td>"
            for j, c in enumerate(row)) + "</tr>"

    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(row_html(r) for r in rows)
    if total:
        body += row_html(total, ' class="total"')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_info_html(run_info: dict) -> str:
    rows = []
    for key, value in run_info.items():
        if isinstance(value, (dict, list, tuple)):
            cell = f"<code>{_esc(json.dumps(value, indent=1, sort_keys=True, default=str))}</code>"
        elif isinstance(value, float):
            cell = f"{value:.6g}"  # a learning rate of 1e-4 must not print as 0.000
        else:
            cell = _fmt(value)
        rows.append([_esc(key), cell])
    return "<h2>Run</h2>" + _table(["Item", "Value"], rows, numeric_from=2)


_HEADLINE = (
    ("Accuracy", "accuracy", "accuracy_ci"),
    ("Balanced accuracy", "balanced_accuracy", None),
    ("Macro-F1", "macro_f1", "macro_f1_ci"),
    ("AUROC (macro one-vs-rest)", "auroc", None),
    ("Log loss", "log_loss", None),
    ("ECE before calibration", "ece_uncalibrated", None),
    ("ECE after calibration", "ece", None),
)


def _metrics_html(metrics: dict) -> str:
    split = metrics.get("split", "test")
    n = metrics.get("n", "?")
    binary = len(metrics.get("per_class") or {}) == 2
    rows = [
        [_esc("AUROC" if binary and key == "auroc" else label), _fmt(metrics[key]),
         _fmt(metrics.get(ci)) if ci else ""]
        for label, key, ci in _HEADLINE
        if key in metrics
    ]
    rows.append(["n (samples)", _fmt(n), ""])
    out = f"<h2>Headline metrics ({_esc(split)} split, n = {_esc(n)})</h2>"
    out += _table(["Metric", "Value", "95% CI (bootstrap)"], rows)
    per_class = metrics.get("per_class") or {}
    if per_class:
        pc_rows = [
            [_name(name), _fmt(v.get("precision")), _fmt(v.get("recall")), _fmt(v.get("f1")),
             _fmt(v.get("support"))]
            for name, v in per_class.items()
        ]
        out += "<h2>Per class</h2>"
        out += _table(["Class", "Precision", "Recall", "F1", "Support"], pc_rows)
    return out


def _warnings_html(warnings: list[str]) -> str:
    """What the numbers below cannot support, said before them."""
    return "".join(f'<p class="note warn"><strong>Warning:</strong> {_esc(w)}</p>'
                   for w in warnings)


def _kfold_html(kfold: dict) -> str:
    """The k-fold estimate beside the test split's, in the same form."""
    rows = [[_esc(label), _fmt(kfold[key]), _fmt(kfold.get(f"{key}_ci"))]
            for label, key in (("Accuracy", "accuracy"), ("Macro-F1", "macro_f1"))]
    rows.append(["Accuracy per fold", ", ".join(_fmt(a) for a in kfold["fold_accuracy"]), ""])
    rows.append(["n (samples)", _fmt(kfold["n"]), ""])
    head = (f"<h2>k-fold estimate ({_esc(kfold['k'])} folds over the train and validation "
            f"splits, n = {_esc(kfold['n'])}; {_esc(kfold.get('candidate', ''))})</h2>")
    note = ("<p>Each image is predicted by a model that never trained on it; the test split is "
            "in no fold. The interval is over these n images, as the test split's is over its "
            "own.</p>")
    return head + note + _table(["Metric", "Value", "95% CI (bootstrap)"], rows)


def _figures_html(figures: dict[str, str | Path | Note]) -> str:
    if not figures:
        return ""
    parts = ["<h2>Figures</h2>"]
    for caption, fig in figures.items():
        if isinstance(fig, Note):
            parts.append(f'<p class="note"><strong>{_esc(caption)}:</strong> {_esc(fig.text)}</p>')
            continue
        parts.append(
            f'<figure><img src="{image_to_data_uri(fig)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


_SPLIT_ORDER = ("train", "val", "test")


def _splits_html(splits: dict[str, dict[str, int]]) -> str:
    """Images per split and class ({split: {class: n}}), with totals both ways."""
    names = [s for s in _SPLIT_ORDER if s in splits] + sorted(set(splits) - set(_SPLIT_ORDER))
    classes = list(dict.fromkeys(c for s in names for c in splits[s]))
    rows = [[_name(c)] + [_fmt(splits[s].get(c, 0)) for s in names]
            + [_fmt(sum(splits[s].get(c, 0) for s in names))] for c in classes]
    totals = [sum(splits[s].values()) for s in names]
    body = _table(["Class", *names, "all"], rows,
                  total=["all classes", *(_fmt(n) for n in [*totals, sum(totals)])])
    sizes = ", ".join(f"{s} {n}" for s, n in zip(names, totals, strict=True))
    return f"<h2>Data: images per split ({_esc(sizes)})</h2>{body}"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp creates 0600; a report or figure is meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics: dict,
    figures: dict[str, str | Path | Note],
    sections: list[tuple[str, str]] | None = None,
    run_info: dict | None = None,
    splits: dict[str, dict[str, int]] | None = None,
    warnings: list[str] | None = None,
    kfold: dict | None = None,
) -> Path:
    """Write the evaluation report as one self-contained HTML file and return its path.

    ``metrics`` is the dict from ``classification_metrics`` (an optional ``"split"`` key
    names the split; default "test"). ``figures`` maps caption -> image file (embedded) or
    `Note` (a sentence in the figure's place). ``splits`` ({split: {class: n}}) adds the
    table of split sizes. ``warnings`` (sentences) are shown above the headline metrics,
    ``kfold`` (a k-fold estimate: k, n, accuracy, macro_f1 and their ``_ci``,
    fold_accuracy) below them. ``sections`` are (heading, trusted HTML body) pairs appended
    at the end.
    """
    path = Path(path)
    body = [f"<h1>{_esc(title)}</h1>"]
    if run_info:
        body.append(_run_info_html(run_info))
    if splits:
        body.append(_splits_html(splits))
    body.append(_warnings_html(warnings or []))
    body.append(_metrics_html(metrics))
    if kfold:
        body.append(_kfold_html(kfold))
    body.append(_figures_html(figures))
    for heading, snippet in sections or []:
        body.append(f"<section><h2>{_esc(heading)}</h2>{snippet}</section>")
    body.append(f"<footer>Generated by sightwise {_esc(sightwise.__version__)}.</footer>")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    _atomic_write_text(path, page)
    return path
