"""Small torch-free pieces every stage shares, written once.

Atomic writes, hashing, softmax and top-k, the onnxruntime session, version capture, the
model-reference grammar and the class-imbalance rule. Nothing here imports torch, and
onnxruntime is imported only by `make_session`, so any layer can use this module.
(The edge folder's `predict.py` keeps its own copies by necessity: it must run with
onnxruntime, numpy and Pillow alone; tests compare it with these.)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from sightwise.errors import SightwiseError

# -- files ---------------------------------------------------------------------------------


def sha256_path(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Temp file in the same folder, fsync, rename: readers see the old or the new file.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write_bytes(p, b"one").read_bytes(), oct(p.stat().st_mode & 0o777)
    (b'one', '0o644')
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; bundles and reports are read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, *, indent: int | None = 2) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=indent).encode("utf-8"))


# -- probabilities -------------------------------------------------------------------------


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / T), computed in float64, returned as float32.

    A 1-D input is treated as one row and a 1-D result returned.

    >>> softmax(np.array([[0.0, 0.0], [50.0, 0.0]]), 0.5).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    >>> softmax(np.array([1.0, 1.0])).tolist()
    [0.5, 0.5]
    """
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    z = np.asarray(logits, np.float64)
    one = z.ndim == 1
    z = np.atleast_2d(z) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return p[0] if one else p


def top_k_indices(probs, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; ties keep the lower index first.
    k is clamped to 1..len(probs), so `--top-k 0` still answers the best class.

    >>> top_k_indices(np.array([0.2, 0.4, 0.4]), 2).tolist()
    [1, 2]
    >>> top_k_indices(np.array([0.2, 0.8]), 0).tolist(), top_k_indices(np.array([0.2, 0.8]), 9).tolist()
    ([1], [1, 0])
    """
    p = np.asarray(probs)
    k = max(1, min(int(k), p.shape[-1]))
    return np.argsort(-p, kind="stable")[:k]


# -- onnxruntime ---------------------------------------------------------------------------


def make_session(model: str | Path | bytes, threads: int | None = None, *,
                 optimize: bool = True, quiet: bool = False):
    """An onnxruntime CPU session; `threads` intra-op threads (None/0: one per core).

    `model` is a file path or the serialised graph's bytes; `quiet` silences onnxruntime's
    warnings (e.g. about the undeclared shapes of probe outputs).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if quiet:
        opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = int(threads or 0)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


# -- provenance ----------------------------------------------------------------------------

_VERSIONED = ("sightwise", "numpy", "onnxruntime", "torch", "torchvision", "timm",
              "scikit-learn", "mlflow")


def package_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the packages a run depends on (those present), and Python's."""
    out = {"python": platform.python_version()}
    for name in (*_VERSIONED, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The commit of the checkout Sightwise runs from, or None (installed from a wheel)."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


# -- model references ----------------------------------------------------------------------
# One grammar for every surface (registry, CLI, server): a name is also a folder name and a
# command-line word, so it starts with a letter or digit (never '-', '_' or '.') and holds
# no '..'. Versions are 1..999999999 (MLflow stores them as 32-bit integers).

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
VERSION_PATTERN = r"[1-9][0-9]{0,8}"
_NAME_RE = re.compile(NAME_PATTERN)
_ALIAS_RE = re.compile(ALIAS_PATTERN)
_REF_RE = re.compile(rf"(?P<name>{NAME_PATTERN})(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))")
MAX_VERSION = 999_999_999


class ModelRefError(SightwiseError):
    """A model name, alias, version or reference outside the grammar above."""


def validate_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise ModelRefError.

    >>> validate_name("parts-qc.v2")
    'parts-qc.v2'
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ModelRefError(
            f"invalid model name {name!r}: use 1-100 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (no '..')")
    return name


def validate_alias(alias: str) -> str:
    # MLflow reserves "latest" and "v<number>" (they would shadow version references).
    if (not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias) or alias.lower() == "latest"
            or re.fullmatch(r"[vV]\d+", alias)):
        raise ModelRefError(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '-' or '_', starting with a "
            "letter (not 'latest' or 'v<number>')")
    return alias


def validate_version(version) -> int:
    text = str(version)
    if not re.fullmatch(VERSION_PATTERN, text):
        raise ModelRefError(f"invalid version {version!r}: use a whole number from 1 to "
                              f"{MAX_VERSION:,}")
    return int(text)


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """NAME@ALIAS or NAME/VERSION -> (name, alias, version); anything else raises.

    >>> parse_model_ref("parts-qc@production")
    ('parts-qc', 'production', None)
    >>> parse_model_ref("parts-qc/3")
    ('parts-qc', None, 3)
    >>> parse_model_ref("demo/99999999999999999999")
    Traceback (most recent call last):
    ...
    sightwise.core.ModelRefError: invalid version '99999999999999999999': use a whole \
number from 1 to 999,999,999
    """
    m = _REF_RE.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise ModelRefError(f"invalid model reference {ref!r}: use NAME@ALIAS or "
                              "NAME/VERSION, NAME starting with a letter or digit")
    name = validate_name(m["name"])
    if m["alias"] is not None:
        return name, validate_alias(m["alias"]), None
    return name, None, validate_version(m["version"])


def looks_like_model_ref(text: str) -> bool:
    """True when `text` is meant as a registry reference (has '@', or ends in /DIGITS),
    valid or not: `parse_model_ref` then says what is wrong with it.

    >>> looks_like_model_ref("m@prod"), looks_like_model_ref("../m/1"), looks_like_model_ref("runs/a")
    (True, True, False)
    """
    return isinstance(text, str) and ("@" in text or bool(re.fullmatch(r".+/\d+", text)))


# -- data rules ----------------------------------------------------------------------------

IMBALANCE_RATIO = 3.0  # above this largest:smallest class ratio, the loss is weighted


def is_imbalanced(counts, ratio: float = IMBALANCE_RATIO) -> bool:
    """True when the largest class has more than `ratio` times the smallest's images.

    >>> is_imbalanced([30, 10]), is_imbalanced([31, 10])
    (False, True)
    """
    c = np.asarray(counts, np.float64)
    c = c[c > 0]
    return bool(len(c) > 1 and c.max() > ratio * c.min())
