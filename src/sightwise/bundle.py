"""The model bundle: a folder that is registered, served and shipped (DESIGN.md).

`bundle.json` lists every file with its sha256; loading verifies each one and refuses
pickles and paths that leave the folder. Torch-free, so the runtime and server can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sightwise.data.preprocess import Preprocessing
from sightwise.errors import BundleError

SCHEMA_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; bundles are read by servers and users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=False).encode("utf-8"))


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.meta["preprocessing"])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

    @property
    def task(self) -> str:
        return self.meta.get("task", "classification")

    def file(self, name: str) -> Path:
        if name not in self.meta.get("files", {}):
            raise BundleError(f"{self.path}: bundle has no {name}")
        return self.path / name


def write_bundle_meta(path: Path, meta: dict) -> dict:
    """Hash every regular file in the folder (except bundle.json) into meta['files']."""
    path = Path(path)
    files = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name != "bundle.json" and not f.name.startswith("."):
            files[f.name] = {"sha256": sha256_path(f), "bytes": f.stat().st_size}
    meta = {"schema_version": SCHEMA_VERSION, **meta, "files": files}
    atomic_write_json(path / "bundle.json", meta)
    return meta


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read bundle.json, refuse unsafe content, verify every listed file's sha256."""
    root = Path(path)
    meta_path = root / "bundle.json"
    if not meta_path.is_file():
        raise BundleError(f"{root}: not a bundle (no bundle.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta_path}: unreadable ({exc})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{root}: bundle schema {meta.get('schema_version')!r}, this Sightwise reads "
            f"{SCHEMA_VERSION}"
        )
    _refuse_unsafe(root)
    if verify:
        for name, entry in meta.get("files", {}).items():
            f = _inside(root, name)
            if not f.is_file():
                raise BundleError(f"{root}: listed file {name} is missing")
            if sha256_path(f) != entry["sha256"]:
                raise BundleError(f"{root}: {name} does not match its sha256 (modified or corrupt)")
    return Bundle(root, meta)


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise BundleError(f"{root}: file {name!r} points outside the bundle")
    return target


def _refuse_unsafe(root: Path) -> None:
    for f in root.rglob("*"):
        if f.suffix.lower() in PICKLE_SUFFIXES:
            raise BundleError(f"{root}: holds a pickle file ({f.name}); bundles never load pickles")
        if f.is_symlink():
            _inside(root, str(f.relative_to(root)))
