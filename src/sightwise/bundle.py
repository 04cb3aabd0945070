"""The model bundle: a folder that is registered, served and shipped (DESIGN.md).

`bundle.json` is read into one typed record, `BundleMeta`, validated field by field (a
temperature of 0 or a class list shorter than the head is refused here, with one line,
not discovered later as NaN probabilities or a traceback). It lists every file with its
sha256 and carries a `digest` over its own content, so a changed file *or* a changed
field (classes, calibration, the file list) is refused at load; the registry records the
digest outside the bundle at registration and compares it on every load.

`Bundle.graph()` is the one rule that decides which ONNX graph may run. Torch-free, so
the runtime and the server can use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sightwise.core import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_path
from sightwise.data.preprocess import RESIZE_MODES, Preprocessing
from sightwise.errors import BundleError

SCHEMA_VERSION = 1
TASKS = ("classification", "embedding", "anomaly")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
FP32, INT8 = "model.onnx", "model.int8.onnx"
MAX_META_BYTES = 16 << 20  # a bundle.json is a few KB; anything near this is not one
MAX_CLASSES = 100_000

__all__ = ["SCHEMA_VERSION", "FP32", "INT8", "Bundle", "BundleMeta", "ExportInfo",
           "FileEntry", "atomic_write_bytes", "atomic_write_json", "sha256_path",
           "load_bundle", "meta_digest", "write_bundle_meta", "find_bundle_dir"]


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ExportInfo:
    """What `sightwise export` recorded: which graphs passed the parity gate."""

    fp32_passed: bool
    int8_passed: bool | None  # None: no int8 graph was made
    forced: bool
    failed_checks: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.fp32_passed and self.int8_passed is not False


@dataclass(frozen=True)
class BundleMeta:
    """bundle.json as a typed, validated record. `raw` keeps the whole document (reports,
    provenance and task-specific sections such as `anomaly` are read from it)."""

    task: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: float
    files: MappingProxyType
    digest: str
    model: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    export: ExportInfo | None = None
    raw: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    @property
    def num_features(self) -> int | None:
        n = self.model.get("num_features")
        return int(n) if n is not None else None

    @property
    def strategy(self) -> str | None:
        return self.model.get("strategy")

    @property
    def metrics(self) -> dict:
        return dict(self.raw.get("metrics") or {})

    @property
    def data(self) -> dict:
        return dict(self.raw.get("data") or {})

    @property
    def created(self) -> str | None:
        return self.raw.get("created")

    def section(self, name: str) -> dict:
        """A task-specific or provenance section (e.g. 'anomaly', 'config'), {} if absent."""
        value = self.raw.get(name)
        return dict(value) if isinstance(value, dict) else {}

    def to_dict(self) -> dict:
        """The JSON document (a deep copy)."""
        return json.loads(json.dumps(dict(self.raw)))

    @classmethod
    def from_dict(cls, doc: Any, where: str = "bundle.json") -> BundleMeta:
        """Validate `doc`; raise BundleError naming the first bad field."""
        return _parse(doc, where)


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: BundleMeta

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.meta.preprocessing

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def task(self) -> str:
        return self.meta.task

    @property
    def digest(self) -> str:
        return self.meta.digest

    def has(self, name: str) -> bool:
        return name in self.meta.files

    def file(self, name: str) -> Path:
        if name not in self.meta.files:
            raise BundleError(f"{self.path}: bundle has no {name}")
        return self.path / name

    def graph(self, *, int8: bool = False) -> Path:
        """The ONNX graph that may run: the one rule, used by predict, explain, serve,
        search and promotion. A graph runs only when `sightwise export` recorded that it
        passed its parity gate against PyTorch, or the export was forced."""
        name = INT8 if int8 else FP32
        if name not in self.meta.files:
            hint = (f"export it with `sightwise export {self.path} --int8`" if int8 else
                    f"run `sightwise export {self.path}` (needs the training extra)")
            raise BundleError(f"{self.path}: bundle has no {name}; {hint}")
        if self.task == "embedding":
            return self.path / name  # the pretrained backbone's own graph, checked when written
        info = self.meta.export
        if info is None:
            raise BundleError(f"{self.path}: {name} has no parity record; re-export it with "
                              f"`sightwise export {self.path}`")
        passed = info.int8_passed if int8 else info.fp32_passed
        if not passed and not info.forced:
            why = "; ".join(info.failed_checks) or "see parity.json"
            raise BundleError(f"{self.path}: {name} failed its parity gate at export ({why}); "
                              "re-export it, or export with --force to use it anyway")
        return self.path / name


# -- writing -------------------------------------------------------------------------------


def meta_digest(doc: dict) -> str:
    """sha256 over bundle.json's content without its own `digest` field (canonical JSON)."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def write_bundle_meta(path: Path, meta: dict) -> dict:
    """Hash every regular file in the folder (except bundle.json) into meta['files'], add
    the digest, validate, and write bundle.json atomically. Returns what was written."""
    path = Path(path)
    files = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and not f.is_symlink() and f.name != "bundle.json" and not f.name.startswith("."):
            files[f.name] = {"sha256": sha256_path(f), "bytes": f.stat().st_size}
    doc = {"schema_version": SCHEMA_VERSION,
           **{k: v for k, v in meta.items() if k not in ("files", "digest", "schema_version")},
           "files": files}
    doc = json.loads(json.dumps(doc))  # tuples -> lists: exactly what a reader will see
    doc["digest"] = meta_digest(doc)
    _parse(doc, str(path / "bundle.json"))  # never write what load_bundle would refuse
    atomic_write_json(path / "bundle.json", doc)
    return doc


# -- loading -------------------------------------------------------------------------------


def find_bundle_dir(path: str | Path) -> Path:
    """`path` itself when it holds bundle.json, else `path/bundle` (a run folder)."""
    p = Path(path)
    if not (p / "bundle.json").is_file() and (p / "bundle" / "bundle.json").is_file():
        return p / "bundle"
    return p


def load_bundle(path: str | Path, *, verify: bool = True,
                expected_sha256: str | None = None) -> Bundle:
    """Read and validate bundle.json, refuse unsafe content, verify every listed file.

    `expected_sha256` is the sha256 of bundle.json's bytes recorded by the registry at
    registration (outside the bundle): a registered version cannot be rewritten unnoticed,
    not even with a recomputed digest.
    """
    root = Path(path)
    meta_path = root / "bundle.json"
    if not meta_path.is_file():
        raise BundleError(f"{root}: not a bundle (no bundle.json)")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise BundleError(f"{meta_path}: larger than {MAX_META_BYTES >> 20} MiB; not a bundle.json")
    raw = meta_path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
        raise BundleError(f"{root}: bundle.json is not the one that was registered (sha256 "
                          f"{sha256_bytes(raw)[:12]}, registered {expected_sha256[:12]})")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BundleError(f"{meta_path}: nested too deeply to be a bundle.json") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta_path}: unreadable ({exc})") from None
    meta = _parse(doc, str(meta_path))
    if meta_digest(doc) != meta.digest:
        raise BundleError(f"{root}: bundle.json was changed after it was written (its digest "
                          "does not match its content); re-export it")
    _refuse_unsafe(root)
    if verify:
        for name, entry in meta.files.items():
            f = _inside(root, name)
            if not f.is_file():
                raise BundleError(f"{root}: listed file {name} is missing")
            if f.stat().st_size != entry.bytes or sha256_path(f) != entry.sha256:
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


# -- validation ----------------------------------------------------------------------------


def _parse(doc: Any, where: str) -> BundleMeta:
    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: {what}")

    if not isinstance(doc, dict):
        raise bad(f"expected a JSON object, found {type(doc).__name__}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise bad(f"bundle schema {doc.get('schema_version')!r}, this Sightwise reads {SCHEMA_VERSION}")
    task = doc.get("task", "classification")
    if task not in TASKS:
        raise bad(f"task {task!r} is not one of {', '.join(TASKS)}")
    classes = _classes(doc.get("classes"), bad)
    model = doc.get("model") or {}
    if not isinstance(model, dict):
        raise bad("model must be an object")
    n_head = model.get("num_classes")
    if n_head is not None and (not _is_int(n_head) or (task == "classification"
                                                       and int(n_head) != len(classes))):
        raise bad(f"classes lists {len(classes)} names but the model's head has {n_head!r} outputs")
    digest = doc.get("digest")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise bad("has no digest (written by an older Sightwise); re-export the bundle with "
                  "`sightwise export`")
    return BundleMeta(
        task=task, classes=classes,
        preprocessing=_preprocessing(doc.get("preprocessing"), bad),
        temperature=_temperature(doc.get("calibration"), bad),
        files=MappingProxyType(_files(doc.get("files"), bad)),
        digest=digest, model=MappingProxyType(dict(model)),
        export=_export(doc.get("export"), bad), raw=MappingProxyType(doc))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _classes(value, bad) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise bad("classes must be a non-empty list of names")
    if len(value) > MAX_CLASSES or not all(isinstance(c, str) and c.strip() for c in value):
        raise bad("classes must be non-empty strings")
    if len(set(value)) != len(value):
        raise bad("classes must not repeat a name")
    return tuple(value)


def _preprocessing(value, bad) -> Preprocessing:
    if not isinstance(value, dict):
        raise bad("preprocessing must be an object with size, resize, interpolation, mean, std")
    size, mean, std = value.get("size"), value.get("mean"), value.get("std")
    if not _is_int(size):
        raise bad(f"preprocessing.size must be a whole number, found {size!r}")
    for name, vec in (("mean", mean), ("std", std)):
        if not (isinstance(vec, list) and len(vec) == 3 and all(_finite(v) for v in vec)):
            raise bad(f"preprocessing.{name} must be three finite numbers")
    if not all(v > 0 for v in std):
        raise bad("preprocessing.std must be positive (a zero std divides by zero)")
    if value.get("resize") not in RESIZE_MODES:
        raise bad(f"preprocessing.resize must be one of {', '.join(RESIZE_MODES)}")
    try:
        return Preprocessing.from_dict(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"preprocessing: {exc}") from None


def _temperature(calibration, bad) -> float:
    if calibration is None:
        return 1.0
    if not isinstance(calibration, dict):
        raise bad("calibration must be an object")
    t = calibration.get("temperature", 1.0)
    # T <= 0 gives NaN (0) or an inverted ranking (< 0); beyond 1e3 every answer is uniform.
    if not _finite(t) or not 1e-3 <= t <= 1e3:
        raise bad(f"calibration.temperature must be a number in [0.001, 1000], found {t!r}")
    return float(t)


def _files(value, bad) -> dict[str, FileEntry]:
    if not isinstance(value, dict):
        raise bad("files must be an object mapping file names to their sha256 and size")
    out = {}
    for name, entry in value.items():
        if not isinstance(entry, dict):
            raise bad(f"files[{name!r}] must be an object with sha256 and bytes")
        sha, size = entry.get("sha256"), entry.get("bytes")
        if not (isinstance(sha, str) and len(sha) == 64) or not (_is_int(size) and size >= 0):
            raise bad(f"files[{name!r}] needs a 64-character sha256 and a byte count")
        out[name] = FileEntry(sha, int(size))
    return out


def _export(value, bad) -> ExportInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("export must be an object")
    fp32 = value.get("fp32_passed", value.get("parity_passed"))
    int8 = value.get("int8_passed")
    if not isinstance(fp32, bool) or not (int8 is None or isinstance(int8, bool)):
        raise bad("export.fp32_passed must be true or false (and int8_passed true, false or null)")
    checks = value.get("failed_checks") or []
    return ExportInfo(fp32, int8, bool(value.get("forced", False)),
                      tuple(str(c) for c in checks) if isinstance(checks, list) else ())
