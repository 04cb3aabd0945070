"""Builders shared by tests/export and tests/runtime (loaded by path from both conftests).

One tiny real bundle per test session: 6 texture classes x 24 tiles of 40 px (the demo's
data, smaller), EfficientNet-Lite0 linear probe at 64 px, exported fp32 + int8 with an edge
package. Lite0 is the interesting case: timm's TF "same" padding is traced as shape math.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sightwise.bundle import load_bundle, write_bundle_meta


def trained_bundle(base: Path) -> Path:
    """Train once per session (idempotent: a finished build is reused)."""
    from sightwise.config import TrainConfig
    from sightwise.data.demo import make_texture_dataset
    from sightwise.train.pipeline import run_training

    done = base / "trained.ok"
    if not done.exists():
        data = make_texture_dataset(base / "data", tile=40, per_class=24)
        run_training(TrainConfig(data=str(data), out=str(base / "run"), strategy="linear-probe",
                                 img_size=64, progress=False), log=lambda _m: None)
        done.write_text("ok")
    return base / "run" / "bundle"


def exported_bundle(base: Path) -> tuple[Path, Path]:
    """(bundle, edge folder): a copy of the trained bundle exported with int8 + edge."""
    from sightwise.export.api import export_bundle

    bundle, edge = base / "exported", base / "edge"
    done = base / "exported.ok"
    if not done.exists():
        src = trained_bundle(base)
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(src, bundle)
        export_bundle(bundle, int8=True, edge_dir=edge, log=lambda _m: None)
        done.write_text("ok")
    return bundle, edge


def copy_bundle(src: Path, dst: Path, **preprocessing) -> Path:
    """A copy of `src` whose bundle.json says different preprocessing (same size)."""
    shutil.copytree(src, dst)
    meta = load_bundle(dst).meta.to_dict()
    meta["preprocessing"] = {**meta["preprocessing"], **preprocessing}
    meta.pop("files")
    write_bundle_meta(dst, meta)
    return dst
