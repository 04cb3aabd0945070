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
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9rem}
code{white-space:pre-wrap;font-size:.85rem}
footer{margin-top:3rem;color:#57606a;font-size:.8rem}
"""


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


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """Rows hold already-escaped cell HTML; columns from ``numeric_from`` align right."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if j >= numeric_from else f"<td>{c}</td>"
            for j, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
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
            [_esc(name), _fmt(v.get("precision")), _fmt(v.get("recall")), _fmt(v.get("f1")),
             _fmt(v.get("support"))]
            for name, v in per_class.items()
        ]
        out += "<h2>Per class</h2>"
        out += _table(["Class", "Precision", "Recall", "F1", "Support"], pc_rows)
    return out


def _figures_html(figures: dict[str, str | Path]) -> str:
    if not figures:
        return ""
    parts = ["<h2>Figures</h2>"]
    for caption, fig_path in figures.items():
        parts.append(
            f'<figure><img src="{image_to_data_uri(fig_path)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


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
    figures: dict[str, str | Path],
    sections: list[tuple[str, str]] | None = None,
    run_info: dict | None = None,
) -> Path:
    """Write the evaluation report as one self-contained HTML file and return its path.

    ``metrics`` is the dict from ``classification_metrics`` (an optional ``"split"`` key
    names the split; default "test"). ``figures`` maps caption -> image file; each is
    embedded. ``sections`` are (heading, trusted HTML body) pairs appended at the end.
    """
    path = Path(path)
    body = [f"<h1>{_esc(title)}</h1>"]
    if run_info:
        body.append(_run_info_html(run_info))
    body.append(_metrics_html(metrics))
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
