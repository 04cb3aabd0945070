"""The audit for people: a short text summary and a self-contained HTML page with
thumbnails (embedded as data: URIs, so the page opens anywhere, offline)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from sightwise.core import atomic_write_text
from sightwise.data.datasets import NPZ_SCHEME, read_npz_image
from sightwise.data.decode import array_to_image, decode_image
from sightwise.errors import ImageDecodeError

THUMB = 112
MAX_ROWS = 200  # per table; the JSON has every row


def summary_text(result: dict, top: int = 10) -> str:
    s = result["summary"]
    bal = result["class_balance"]
    lines = [
        f"{s['images']} images, {s['classes']} classes ({s['features']}, {s['folds']} folds; "
        f"out-of-fold accuracy {s['oof_accuracy']:.3f}); {s['skipped']} unreadable",
        f"label errors suspected: {s['suspects']} ({100 * s['suspect_share']:.1f} %; estimated "
        f"noise rate {100 * s['estimated_noise_rate']:.1f} %)",
    ]
    lines += [f"  {x['score']:.3f}  {x['path']}: given {x['given']}, looks like {x['suggested']}"
              for x in result["suspects"][:top]]
    if 0 < top < len(result["suspects"]):
        lines.append(f"  ... {len(result['suspects']) - top} more (--json or --html)")
    lines.append(f"near-duplicates with different labels (labelling errors): "
                 f"{s['conflicting_duplicates']}")
    lines += [f"  {p['a']['path']} ({p['a']['label']}) ~ {p['b']['path']} ({p['b']['label']})"
              for p in result["conflicting_duplicates"][:top]]
    lines.append(f"near-duplicates across splits (leakage): {s['leakage_pairs']}")
    lines.append(f"outliers: {s['outliers']}")
    ratio = f"{bal['ratio']:.1f}:1" if bal["ratio"] else "n/a"
    lines.append(f"class balance: largest:smallest {ratio}"
                 + (" (imbalanced: train weights the loss)" if bal["imbalanced"] else "")
                 + (f"; empty: {', '.join(bal['empty_classes'])}" if bal["empty_classes"] else ""))
    return "\n".join(lines)


def _thumb(source: str) -> str:
    try:
        img = (array_to_image(read_npz_image(source)) if source.startswith(NPZ_SCHEME)
               else decode_image(source))
    except (ImageDecodeError, OSError, KeyError, ValueError):
        return '<span class="broken">unreadable</span>'
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(source).name)}">'


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[:MAX_ROWS])
    more = f"<p>{len(rows) - MAX_ROWS} more rows in the JSON.</p>" if len(rows) > MAX_ROWS else ""
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>{more}"


def _e(x) -> str:
    return html.escape(str(x))


def write_audit_html(result: dict, out: str | Path) -> Path:
    s = result["summary"]
    suspects = [[_thumb(x["path"]), _e(x["path"]), _e(x["given"]), _e(x["suggested"]),
                 f"{x['score']:.3f}"] for x in result["suspects"][:MAX_ROWS]]
    pairs = [[_thumb(p["a"]["path"]), _e(f"{p['a']['path']} ({p['a']['label']}, "
                                        f"{p['a']['split'] or '-'})"),
              _thumb(p["b"]["path"]), _e(f"{p['b']['path']} ({p['b']['label']}, "
                                         f"{p['b']['split'] or '-'})"), f"{p['similarity']:.3f}"]
             for p in result["conflicting_duplicates"][:MAX_ROWS]]
    leaks = [[_thumb(p["a"]["path"]), _e(f"{p['a']['path']} ({p['a']['split']})"),
              _thumb(p["b"]["path"]), _e(f"{p['b']['path']} ({p['b']['split']})"),
              f"{p['similarity']:.3f}"] for p in result["leakage"][:MAX_ROWS]]
    outliers = [[_thumb(x["path"]), _e(x["path"]), _e(x["label"]), f"{x['score']:.1f}"]
                for x in result["outliers"][:MAX_ROWS]]
    counts = result["class_balance"]["counts"]
    balance = [[_e(c), str(n)] for c, n in counts.items()]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data audit: {_e(s.get('data', ''))}</title>
<style>body{{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:70rem;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #d0d7de;padding:.3rem;
text-align:left;vertical-align:middle;overflow-wrap:anywhere}}img{{image-rendering:pixelated;
width:{THUMB}px;height:auto}}.broken{{color:#a40e26}}pre{{background:#f3f5f8;padding:.75rem}}</style>
</head><body><h1>Data audit</h1>
<pre>{_e(summary_text(result, top=0))}</pre>
<h2>Probable label errors ({len(result['suspects'])})</h2>
<p>Confident learning on {s['folds']}-fold out-of-fold probabilities of a linear probe;
score = 1 - p(given label), most suspicious first.</p>
{_table(["image", "path", "given", "suggested", "score"], suspects, "None found.")}
<h2>Near-duplicates with different labels ({len(result['conflicting_duplicates'])})</h2>
<p>One label of each pair is wrong (cosine &ge; {s['duplicate_threshold']} on centred features).</p>
{_table(["a", "", "b", "", "similarity"], pairs, "None found.")}
<h2>Near-duplicates across splits: leakage ({len(result['leakage'])})</h2>
{_table(["a", "", "b", "", "similarity"], leaks, "None found.")}
<h2>Outliers ({len(result['outliers'])})</h2>
<p>Mean distance to the 5 nearest neighbours, robust z-score above {s['outlier_z']}.</p>
{_table(["image", "path", "label", "z"], outliers, "None found.")}
<h2>Class balance</h2>
{_table(["class", "images"], balance, "No classes.")}
</body></html>
"""
    return atomic_write_text(out, page)
