"""Planted near-duplicates (copy, JPEG q70 re-encode, +-5% resize) are all found, and pairs
across splits are flagged as leakage."""

from __future__ import annotations

import io
import json

from PIL import Image
from typer.testing import CliRunner

from sightwise.search.cli import index_app

# The session bundle is a 64 px linear probe on texture tiles: a q70 JPEG of a moon texture
# sits at cosine ~0.93 to its original there (real photo bundles: > 0.95, the CLI default).
THRESHOLD = "0.9"


def _plant(texture_data, root):
    """train/<class>/ originals; test/<class>/ holds altered copies of three of them."""
    planted = {}
    classes = sorted(p for p in texture_data.iterdir() if p.is_dir())
    for c in classes:
        for i, f in enumerate(sorted(c.glob("*.png"))[:4]):
            dst = root / "train" / c.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            # 160 px photos (the 40 px tiles upscaled): JPEG q70 of a 40 px noise tile is
            # not a near-duplicate to anyone, a photo's re-encode is.
            Image.open(f).convert("RGB").resize((160, 160), Image.BICUBIC).save(dst)
            if i == 0:
                planted[dst] = _variants(dst, root / "test" / c.name)
    # val needs something too so the folder reads as split folders
    (root / "val").mkdir()
    for c in classes:
        (root / "val" / c.name).mkdir()
        (root / "val" / c.name / "v.png").write_bytes(sorted(c.glob("*.png"))[10].read_bytes())
    return planted


def _variants(src, folder):
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(src).convert("RGB")
    (folder / "copy.png").write_bytes(src.read_bytes())
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=70)
    (folder / "q70.jpg").write_bytes(buf.getvalue())
    w, h = im.size
    im.resize((round(w * 1.05), round(h * 1.05))).save(folder / "up5.png")
    im.resize((round(w * 0.95), round(h * 0.95))).save(folder / "down5.png")
    return [folder / n for n in ("copy.png", "q70.jpg", "up5.png", "down5.png")]


def test_every_planted_duplicate_is_found(texture_data, search_bundle, tmp_path):
    planted = _plant(texture_data, tmp_path / "data")
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(index_app, [
        "dupes", str(tmp_path / "data"), "--bundle", str(search_bundle), "--threshold", THRESHOLD,
        "--out", str(tmp_path / "dupes.json"), "--sheet", str(sheet), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "dupes.json").read_text())
    groups = [{m["path"] for m in g} for g in report["groups"]]
    leaks = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["leakage"]}
    for original, copies in planted.items():
        group = next(g for g in groups if str(original.resolve()) in g)
        for c in copies:
            assert str(c.resolve()) in group, c
            assert frozenset((str(original.resolve()), str(c.resolve()))) in leaks, c
    assert all(p["a"]["split"] != p["b"]["split"] for p in report["leakage"])
    with Image.open(sheet) as im:
        assert im.size[0] > 0 and im.size[1] > 0
