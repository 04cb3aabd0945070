"""The model being served, and hot-swapping it without failing a request.

A `LoadedModel` is immutable: a predictor plus the name and version it answers as. The
`ModelSlot` holds the current one; a swap loads and verifies the new bundle completely
(sha256 of every file, the parity gate, one warm-up run whose output must have the right
shape and be finite) *before* one reference assignment makes it current. Work already
queued keeps a reference to the model it was preprocessed for, so it finishes on that
model and reports that model's version; the old model is freed when the last such
reference goes. A failed load changes nothing but `last_error`.
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

from sightwise.bundle import load_bundle
from sightwise.data.preprocess import normalize, resize_rgb
from sightwise.errors import SightwiseError
from sightwise.runtime import Predictor
from sightwise.runtime.cam import class_activation_map
from sightwise.runtime.predictor import softmax

log = logging.getLogger("sightwise.serve")

Version = int | str
Watch = Callable[[], "tuple[Version, Path | str] | None"]


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_version(bundle_path: str | Path) -> str:
    """Version of a bundle served from a folder: a short hash of its bundle.json, which
    lists the sha256 of every file, so any change to the bundle changes it."""
    digest = hashlib.sha256((Path(bundle_path) / "bundle.json").read_bytes()).hexdigest()
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

    def probabilities(self, arrays: list[np.ndarray]) -> np.ndarray:
        x = normalize(np.stack(arrays), self.predictor.preprocessing)
        logits = self.predictor.run(x, ["logits"])["logits"]
        return softmax(logits, self.predictor.temperature)

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

    def info(self) -> dict:
        meta = self.predictor.bundle.meta
        return {"name": self.name, "version": self.version, "classes": self.classes,
                "metrics": meta.metrics, "loaded_at": self.loaded_at,
                "bundle_created": meta.created}


def load_model(name: str, version: Version, path: str | Path, *,
               threads: int | None = None, batch_size: int = 64) -> LoadedModel:
    """Load, verify and warm up a bundle; raises SightwiseError if it cannot serve."""
    bundle = load_bundle(path)  # checks the schema and every file's sha256
    predictor = Predictor(bundle, threads=threads, batch_size=batch_size)
    size = predictor.preprocessing.size
    logits = predictor.run(np.zeros((1, 3, size, size), np.float32), ["logits"])["logits"]
    if logits.shape != (1, len(predictor.classes)) or not np.isfinite(logits).all():
        raise SightwiseError(f"{path}: warm-up gave logits of shape {logits.shape} "
                             f"(finite: {bool(np.isfinite(logits).all())}), expected "
                             f"(1, {len(predictor.classes)})")
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
                self.last_error = {"version": version, "message": str(exc)[:500], "at": now_iso()}
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
        self.last_error = {"version": None, "message": message, "at": now_iso()}


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
