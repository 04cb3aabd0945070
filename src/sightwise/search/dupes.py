"""Near-duplicates and split leakage from embeddings.

Pairs with cosine >= threshold come from an exact FAISS range search over the stored unit
vectors (no approximation: a missed duplicate is a leak nobody sees); groups are the
connected components of that pair graph (scipy). A pair whose two images sit in different
splits (train/val/test) is leakage: the test set is measuring memory, not generalisation.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import faiss
import numpy as np
from PIL import Image, ImageDraw
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sightwise.bundle import atomic_write_bytes
from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError
from sightwise.search.store import SearchIndex

DEFAULT_THRESHOLD = 0.95


def similar_pairs(vectors: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for i < j with cosine >= threshold, over unit rows, exact."""
    x = np.ascontiguousarray(vectors, np.float32)
    if len(x) < 2:
        return []
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    lims, sims, ids = flat.range_search(x, float(threshold))
    out = []
    for i in range(len(x)):
        for s, j in zip(sims[lims[i]:lims[i + 1]], ids[lims[i]:lims[i + 1]], strict=True):
            if j > i:
                out.append((i, int(j), float(s)))
    return out


def find_duplicates(index: SearchIndex, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{"groups": [[item...]...], "leakage": [{a, b, similarity}], ...} (JSON-ready)."""
    pairs = similar_pairs(index.vectors, threshold)
    n = len(index.items)
    groups: list[list[dict]] = []
    if pairs:
        rows, cols = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        members: dict[int, list[int]] = {}
        for i in sorted(set(rows.tolist()) | set(cols.tolist())):
            members.setdefault(int(comp[i]), []).append(i)
        groups = [[_brief(index.items[i]) for i in m] for m in members.values() if len(m) > 1]
        groups.sort(key=lambda g: (-len(g), g[0]["path"]))
    leakage = [{"a": _brief(index.items[i]), "b": _brief(index.items[j]), "similarity": s}
               for i, j, s in pairs if _crosses(index.items[i], index.items[j])]
    return {"threshold": threshold, "n_items": n, "n_pairs": len(pairs),
            "groups": groups, "leakage": leakage}


def _brief(item: dict) -> dict:
    return {k: item.get(k) for k in ("id", "path", "label", "split")}


def _crosses(a: dict, b: dict) -> bool:
    return bool(a.get("split") and b.get("split") and a["split"] != b["split"])


def contact_sheet(groups: list[list[dict]], out: str | Path, *, thumb: int = 96,
                  max_groups: int = 50, max_per_group: int = 8) -> Path:
    """One row per duplicate group (first `max_groups`), thumbnails captioned with split."""
    shown = groups[:max_groups]
    cols = max([min(len(g), max_per_group) for g in shown], default=1)
    cell = thumb + 4
    sheet = Image.new("RGB", (max(1, cols) * cell, max(1, len(shown)) * (cell + 12)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(shown):
        for c, item in enumerate(group[:max_per_group]):
            x, y = c * cell + 2, r * (cell + 12) + 2
            try:
                im = decode_image(item["path"])
                im.thumbnail((thumb, thumb))
                sheet.paste(im, (x, y))
            except ImageDecodeError:
                draw.rectangle((x, y, x + thumb, y + thumb), outline="red")
            caption = item.get("split") or Path(item["path"]).name
            draw.text((x, y + thumb + 1), str(caption)[:16], fill="black")
    out = Path(out)
    buf = BytesIO()
    sheet.save(buf, "PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out
