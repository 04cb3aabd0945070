"""A labelling session: the pool, the labels file, the model's view of the pool, leases.

Every method is thread-safe (one lock): the web app calls them from worker threads, one
request per annotator action. The rules:

- `next_item(annotator)` hands out the best unanswered image not leased to anyone else and
  leases it for `lease_s` seconds; asking again (a reloaded tab) returns the same image.
  Two annotators therefore never see the same image while a lease lasts; an abandoned
  image returns to the queue when its lease expires.
- `answer` / `skip` append one fsynced row before returning (store.py), then release the
  lease. `undo` withdraws the annotator's latest row and leases that image back to them.
- Restarting reads the labels file: answered and skipped images are not offered again and
  each annotator's history (for the arrow keys and undo) is rebuilt.
- An image that cannot be decoded is reported by path (log and progress) and never offered
  again; nothing else is affected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightwise.errors import SightwiseError
from sightwise.label.order import centred_unit, density, probe_probabilities, select
from sightwise.label.pool import Pool, PoolError
from sightwise.label.store import MARKERS, SKIP, UNDO, Answer, LabelStore, final_states, now_utc

LEASE_S = 600.0
BATCH = 8  # picks per ordering pass; the order is recomputed after this many answers
TOP_K = 3


class SessionError(SightwiseError):
    """A request the session cannot honour (unknown class, image not leased, ...)."""


@dataclass
class ModelView:
    """What a bundle says about the pool (rows aligned with pool.items)."""

    version: str
    classes: list[str]
    probs: np.ndarray | None  # (N, C_model) calibrated
    emb: np.ndarray | None  # (N, D)
    broken: dict[int, str] = field(default_factory=dict)  # pool index -> reason


class LabelSession:
    def __init__(self, pool: Pool, store: LabelStore, classes: list[str], *,
                 model: ModelView | None = None, order: str = "auto", lease_s: float = LEASE_S,
                 seed: int = 0, batch: int = BATCH, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = print):
        self.pool, self.store, self.classes = pool, store, list(classes)
        self.model, self.order, self.lease_s = model, order, float(lease_s)
        self.batch, self.clock, self.log = max(1, int(batch)), clock, log
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._keys = [store.key(it.path) for it in pool.items]
        self._by_key = {k: i for i, k in enumerate(self._keys)}
        self.broken: dict[int, str] = dict(model.broken) if model else {}
        self._leases: dict[int, tuple[str, float]] = {}
        self._queue: list[int] = []
        self._since_refill = 0
        self.last_mode = ""
        self._emb = centred_unit(model.emb) if model is not None and model.emb is not None else None
        self._model_cols = self._class_columns(model)
        self._dens = density(self._emb) if self._emb is not None else None
        self._state: dict[int, str] = {}
        self._actions: dict[str, list[int]] = {}
        self._replay(store.answers)
        if order in ("kcenter", "margin") and self._emb is None:
            raise SessionError(f"--order {order} needs a bundle's embeddings: pass --bundle")

    # -- state from the file ----------------------------------------------------------------
    def _class_columns(self, model: ModelView | None) -> np.ndarray | None:
        """Column of each labelling class in the model's probabilities, when the model
        knows every labelling class (then its calibrated probabilities drive `margin`)."""
        if model is None or model.probs is None or not set(self.classes) <= set(model.classes):
            return None
        return np.array([model.classes.index(c) for c in self.classes])

    def _replay(self, answers: list[Answer]) -> None:
        ours = [a for a in answers if a.path in self._by_key]
        for path, label in final_states(ours).items():
            self._state[self._by_key[path]] = label
        for a in ours:
            stack = self._actions.setdefault(a.annotator, [])
            i = self._by_key[a.path]
            if a.label == UNDO:
                if i in stack:
                    del stack[len(stack) - 1 - stack[::-1].index(i)]
            else:
                stack.append(i)

    # -- items ------------------------------------------------------------------------------
    def item(self, i: int) -> dict:
        it = self.pool.items[i]
        out = {"id": i, "path": it.rel, "name": it.path.name, "label": self._label(i),
               "suggestions": self._suggestions(i)}
        for k in ("given", "reason"):
            if k in it.meta:
                out[k] = it.meta[k]
        return out

    def _label(self, i: int) -> str | None:
        s = self._state.get(i)
        return s if s is not None and s not in MARKERS else None

    def _suggestions(self, i: int) -> list[dict]:
        meta = self.pool.items[i].meta
        if "suggested" in meta:  # the audit's (or a queue's) own suggestion
            p = meta.get("suggested_p", meta.get("probability"))
            return [{"label": str(meta["suggested"]),
                     "probability": None if p in (None, "") else float(p)}]
        if self.model is None or self.model.probs is None or i in self.broken:
            return []
        p = self.model.probs[i]
        top = np.argsort(-p, kind="stable")[:TOP_K]
        return [{"label": self.model.classes[c], "probability": round(float(p[c]), 4)} for c in top]

    def _check_id(self, i) -> int:
        if not isinstance(i, int) or not 0 <= i < len(self.pool):
            raise PoolError(f"image id {i!r} is not in the pool")
        return i

    # -- ordering ---------------------------------------------------------------------------
    def _free(self, i: int, annotator: str, now: float) -> bool:
        lease = self._leases.get(i)
        return lease is None or lease[0] == annotator or lease[1] <= now

    def _candidates(self, now: float) -> list[int]:
        return [i for i in range(len(self.pool)) if i not in self._state and i not in self.broken
                and (i not in self._leases or self._leases[i][1] <= now)]

    def _refill(self, now: float) -> None:
        cand = self._candidates(now)
        pairs = [(i, self.classes.index(s)) for i, s in self._state.items() if s in self.classes]
        labelled, y = [i for i, _ in pairs], [c for _, c in pairs]
        taken = labelled + [i for i, (_, t) in self._leases.items() if t > now]
        strategy = self.order
        if strategy == "auto" and self._emb is None:
            strategy = "queue" if self.pool.queue_file or self._reviewing() else "random"
        if strategy == "queue":
            self._queue, self.last_mode = cand[: self.batch], "queue order"
        else:
            self._queue, self.last_mode = select(
                strategy, self.batch, candidates=cand, rng=self.rng, emb=self._emb,
                probs=self._probs(labelled, y), selected=taken, labels=y,
                n_classes=len(self.classes), dens=self._dens)
        self._since_refill = 0

    def _reviewing(self) -> bool:
        return bool(self.pool.items) and bool(self.pool.items[0].meta.get("review"))

    def _probs(self, labelled: list[int], y: list[int]) -> np.ndarray | None:
        if self._model_cols is not None:
            p = self.model.probs[:, self._model_cols]
            return p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        if self._emb is None or len(y) < 2:
            return None
        return probe_probabilities(self._emb, labelled, y, len(self.classes))

    def next_item(self, annotator: str) -> dict | None:
        """The annotator's leased image, else the next one in order (leased), else None."""
        annotator = _check_annotator(annotator)
        with self._lock:
            now = self.clock()
            for i, (who, until) in self._leases.items():
                if who == annotator and until > now and i not in self._state:
                    self._leases[i] = (annotator, now + self.lease_s)
                    return self.item(i)
            for _ in range(2):
                if not self._queue or self._since_refill >= self.batch:
                    self._refill(now)
                while self._queue:
                    i = self._queue.pop(0)
                    if i not in self._state and i not in self.broken and self._free(i, annotator, now):
                        self._leases[i] = (annotator, now + self.lease_s)
                        return self.item(i)
            return None

    # -- answers ----------------------------------------------------------------------------
    def answer(self, annotator: str, item_id: int, label: str) -> dict:
        annotator = _check_annotator(annotator)
        i = self._check_id(item_id)
        if label not in self.classes:
            raise SessionError(f"unknown class {label!r}; classes: {', '.join(self.classes)}")
        return self._record(annotator, i, label)

    def skip(self, annotator: str, item_id: int) -> dict:
        return self._record(_check_annotator(annotator), self._check_id(item_id), SKIP)

    def _record(self, annotator: str, i: int, label: str) -> dict:
        with self._lock:
            if i in self.broken:
                raise SessionError(f"{self.pool.items[i].rel} cannot be decoded "
                                   f"({self.broken[i]}); it is not labelled")
            sug = self._suggestions(i)
            self.store.append(Answer(
                self._keys[i], label, annotator, now_utc(),
                self.model.version if self.model else "",
                sug[0]["label"] if sug else "",
                sug[0]["probability"] if sug else None))
            self._state[i] = label
            stack = self._actions.setdefault(annotator, [])
            stack.append(i)
            self._leases.pop(i, None)
            self._since_refill += 1
            return self.item(i)

    def undo(self, annotator: str) -> dict | None:
        """Withdraw the annotator's latest answer; that image is leased back to them."""
        annotator = _check_annotator(annotator)
        with self._lock:
            stack = self._actions.get(annotator) or []
            if not stack:
                return None
            i = stack.pop()
            self.store.append(Answer(self._keys[i], UNDO, annotator, now_utc()))
            ours = [a for a in self.store.answers if a.path == self._keys[i]]
            state = final_states(ours).get(self._keys[i])
            if state is None:
                self._state.pop(i, None)
            else:
                self._state[i] = state
            self._leases[i] = (annotator, self.clock() + self.lease_s)
            return self.item(i)

    def history(self, annotator: str) -> list[dict]:
        """The annotator's answered images, oldest first (each once, at its first answer)."""
        annotator = _check_annotator(annotator)
        with self._lock:
            seen, out = set(), []
            for i in self._actions.get(annotator, []):
                if i not in seen:
                    seen.add(i)
                    out.append({**self.item(i), "skipped": self._state.get(i) == SKIP})
            return out

    def mark_broken(self, item_id: int, reason: str) -> None:
        with self._lock:
            if item_id not in self.broken:
                self.broken[item_id] = reason
                self._leases.pop(item_id, None)
                self.log(f"skipped {self.pool.items[item_id].path}: {reason}")

    def image_path(self, item_id: int) -> Path:
        return self.pool.items[self._check_id(item_id)].path

    def progress(self) -> dict:
        with self._lock:
            per_class = dict.fromkeys(self.classes, 0)
            skipped = 0
            for s in self._state.values():
                if s == SKIP:
                    skipped += 1
                elif s in per_class:
                    per_class[s] += 1
            labelled = sum(per_class.values())
            per_annotator = {a: len(set(v)) for a, v in self._actions.items()}
            return {"total": len(self.pool), "labelled": labelled, "skipped": skipped,
                    "broken": len(self.broken),
                    "queued": len(self.pool) - len(self._state) - len(self.broken),
                    "per_class": per_class, "per_annotator": per_annotator,
                    "broken_paths": [self.pool.items[i].rel for i in sorted(self.broken)],
                    "order": self.order, "last_pick": self.last_mode}


def _check_annotator(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or any(
            c in name for c in ",\n\r\t\"") or name.startswith("!"):
        raise SessionError("annotator must be a name of 1-64 characters (no commas, quotes, "
                           "tabs or line breaks)")
    return name.strip()
