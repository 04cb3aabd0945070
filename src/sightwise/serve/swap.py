"""The model being served, and hot-swapping it without failing a request.

A `LoadedModel` is immutable: a predictor plus the name and version it answers as. The
`ModelSlot` holds the current one; a swap loads and verifies the new bundle completely
(sha256 of every file, the parity gate, one warm-up run whose output must have the right
shape and be finite) *before* one reference assignment makes it current. Work already
queued keeps a reference to the model it was preprocessed for, so it finishes on that
model and reports that model's version; the old model is freed when the last such
reference goes. A failed load changes nothing but `last_error`, which may name files and so is shown
only to token holders (GET /v1/admin/status); public answers get `public_error()`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from sightwise.bundle import Bundle, load_bundle
from sightwise.core import softmax
from sightwise.data.preprocess import normalize, resize_rgb
from sightwise.errors import BundleError, SightwiseError
from sightwise.runtime import Predictor
from sightwise.runtime.cam import class_activation_map

log = logging.getLogger("sightwise.serve")

Version = int | str
Watch = Callable[[], "tuple[Version, Path | str] | None"]


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle_dir(path: str | Path) -> Path:
    """The bundle folder `path` names: the folder itself, or the bundle/ of a run folder
    (as `sightwise predict RUN_DIR` accepts); a one-line error otherwise."""
    p = Path(path)
    if (p / "bundle.json").is_file():
        return p
    if (p / "bundle" / "bundle.json").is_file():
        return p / "bundle"
    if not p.exists():
        raise BundleError(f"{p}: no such folder")
    raise BundleError(f"{p}: not a bundle (no bundle.json) nor a run folder holding bundle/")


def local_version(bundle_path: str | Path) -> str:
    """Version of a bundle served from a folder: a short hash of its bundle.json, which
    lists the sha256 of every file, so any change to the bundle changes it."""
    meta = bundle_dir(bundle_path) / "bundle.json"
    try:
        digest = hashlib.sha256(meta.read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{meta}: unreadable ({exc.strerror})") from None
    return f"local-{digest[:12]}"


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a batching key
class LoadedModel:
    name: str
    version: Version
    path: Path
    predictor: Predictor
    loaded_at: str
    explainable: bool

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def ref(self) -> dict:
        return {"name": self.name, "version": self.version}

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The bundle's resize, done per request (in parallel) so a batch only stacks."""
        return resize_rgb(image, self.predictor.preprocessing)

    def probabilities(self, arrays: list[np.ndarray], embedding: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N,C), embeddings (N,D) or None) from one ONNX run."""
        x = normalize(np.stack(arrays), self.predictor.preprocessing)
        out = self.predictor.run(x, ["logits", "embedding"] if embedding else ["logits"])
        return softmax(out["logits"], self.predictor.temperature), out.get("embedding")

    def explain(self, items: list[tuple[np.ndarray, int | None]]) -> list[tuple]:
        """[(array, class or None)] -> [(cam (h,w), class index, probabilities (C,))]."""
        x = normalize(np.stack([a for a, _ in items]), self.predictor.preprocessing)
        out = self.predictor.run(x, ["logits", "features"])
        probs = softmax(out["logits"], self.predictor.temperature)
        weight, _ = self.predictor.head()
        answers = []
        for i, (_, wanted) in enumerate(items):
            c = int(np.argmax(probs[i])) if wanted is None else int(wanted)
            answers.append((class_activation_map(out["features"][i], weight, c), c, probs[i]))
        return answers

    def label(self) -> str:
        """A name for people: `parts v3` for a registry version; for a bundle served from
        a folder (version `local-<sha>`), its name, architecture and creation date."""
        if isinstance(self.version, int):
            return f"{self.name} v{self.version}"
        meta = self.predictor.bundle.meta
        arch = meta.model.get("name")
        created = str(meta.created or "")[:16].replace("T", " ")
        details = ", ".join(x for x in (arch, f"exported {created} UTC" if created else "") if x)
        return f"{self.name} ({details})" if details else self.name

    def info(self) -> dict:
        meta = self.predictor.bundle.meta
        return {"name": self.name, "version": self.version, "label": self.label(),
                "classes": self.classes, "metrics": meta.metrics,
                "loaded_at": self.loaded_at, "bundle_created": meta.created}


def load_model(name: str, version: Version, path: str | Path | Bundle, *,
               threads: int | None = None, batch_size: int = 64) -> LoadedModel:
    """Load (or take an already verified Bundle), verify and warm up; raises
    SightwiseError if it cannot serve."""
    bundle = path if isinstance(path, Bundle) else load_bundle(bundle_dir(path))
    path = bundle.path
    predictor = Predictor(bundle, threads=threads, batch_size=batch_size)
    size = predictor.preprocessing.size
    logits = predictor.run(np.zeros((1, 3, size, size), np.float32), ["logits"])["logits"]
    if logits.shape != (1, len(predictor.classes)) or not np.isfinite(logits).all():
        raise SightwiseError(f"{path}: warm-up gave logits of shape {logits.shape} "
                             f"(finite: {bool(np.isfinite(logits).all())}), expected "
                             f"(1, {len(predictor.classes)})")
    # The calibration must give probabilities too (a temperature of 0 gives NaN, a
    # negative one inverts the ranking): refuse to serve rather than answer null.
    try:
        softmax(logits, predictor.temperature)
    except ValueError as exc:
        raise SightwiseError(f"{path}: unusable calibration ({exc})") from None
    try:
        predictor.head()
        explainable = True
    except (SightwiseError, OSError, KeyError, ValueError):
        explainable = False  # predictions still work; /v1/explain answers 409
    return LoadedModel(name, version, Path(path), predictor, now_iso(), explainable)


class ModelSlot:
    """The current model and the last swap failure; loads one at a time."""

    def __init__(self, name: str, loader: Callable[[str, Version, Path], LoadedModel],
                 on_change: Callable[[str, LoadedModel | None], None] | None = None):
        self.name = name
        self.loader = loader
        self.on_change = on_change or (lambda result, model: None)
        self.current: LoadedModel | None = None
        self.last_error: dict | None = None
        self._failed: tuple[Version, str] | None = None
        self._lock = threading.Lock()

    def swap_to(self, version: Version, path: str | Path, *, force: bool = False) -> bool:
        """Load `path` as `version` and make it current; False if nothing changed.

        Without `force`, the current version and the last version that failed are skipped,
        so a watcher polling a broken release does not reload it every few seconds.
        """
        with self._lock:
            cur = self.current
            if not force and cur is not None and cur.version == version:
                return False
            if not force and self._failed == (version, str(path)):
                return False
            started = time.perf_counter()
            try:
                new = self.loader(self.name, version, Path(path))
            except Exception as exc:  # whatever went wrong, the old model keeps serving
                self._failed = (version, str(path))
                self.last_error = {"version": version, "message": str(exc)[:500], "at": now_iso(),
                                   "kind": "load"}
                log.error("model %s version %s failed to load; still serving %s: %s",
                          self.name, version, cur.version if cur else "nothing", exc)
                self.on_change("failed", cur)
                return False
            self.current = new  # one reference assignment: requests see old or new
            self._failed, self.last_error = None, None
            log.info("model %s version %s loaded in %.2f s (was %s)", self.name, version,
                     time.perf_counter() - started, cur.version if cur else "none")
            self.on_change("loaded", new)
            return True

    def record_watch_error(self, exc: Exception) -> None:
        message = f"watching the registry failed: {exc}"[:500]
        if (self.last_error or {}).get("message") != message:
            log.error("model %s: %s", self.name, message)
        self.last_error = {"version": None, "message": message, "at": now_iso(),
                           "kind": "watch"}

    def public_error(self) -> dict | None:
        """`last_error` for answers without a token: what failed and when, never the
        exception text (it names files and folders); details are in the log and at
        GET /v1/admin/status."""
        err = self.last_error
        if err is None:
            return None
        cur = self.current
        still = f"still serving version {cur.version}" if cur else "no model is loaded"
        what = ("the registry could not be read" if err.get("kind") == "watch"
                else f"version {err['version']} did not load")
        return {"version": err["version"], "at": err["at"],
                "message": f"{what}; {still} (details: server log, GET /v1/admin/status)"}


class Watcher:
    """Polls `watch()` every `interval_s` in a daemon thread and swaps when it changes."""

    def __init__(self, slot: ModelSlot, watch: Watch, interval_s: float = 5.0):
        self.slot, self.watch, self.interval_s = slot, watch, float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, force: bool = False) -> bool:
        try:
            ref = self.watch()
        except Exception as exc:  # a registry hiccup must not stop the watcher
            self.slot.record_watch_error(exc)
            return False
        if ref is None:
            return False
        version, path = ref
        return self.slot.swap_to(version, path, force=force)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sightwise-watcher",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
