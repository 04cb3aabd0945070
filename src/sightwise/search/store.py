"""`SearchIndex`: unit-length embeddings in a FAISS index, with metadata and provenance.

On disk, a folder:

- ``index.faiss``  the FAISS index: ``IndexIDMap2`` over ``IndexFlatIP`` (exact) or
  ``IndexHNSWFlat(METRIC_INNER_PRODUCT)``; on unit vectors inner product is cosine.
- ``vectors.npy``  the same vectors (float32, row i = ``items[i]``). They are the source of
  truth: HNSW cannot delete, so `remove` rebuilds it from them (flat removes in place), and
  the duplicate finder reads them without touching the index.
- ``items.json``   one record per vector: id, path, label, split, sha256, added_at.
- ``index.json``   kind and parameters, dimension, and the bundle that made the vectors
  (reference, bundle.json sha256, preprocessing): a query embedded by any other bundle is
  meaningless, so it is refused.

Incremental updates: ids are stable int64 (``next_id`` grows); `add` appends through
``add_with_ids`` for both kinds; `remove` is ``remove_ids`` (flat) or a rebuild (HNSW).
Every file is written atomically (temp + rename), ``index.json`` last, so a reader sees a
consistent index unless a writer dies between renames (then `load` refuses mismatched sizes).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from sightwise.bundle import atomic_write_json
from sightwise.errors import SightwiseError

FORMAT_VERSION = 1
FLAT_LIMIT = 50_000  # exact search below this many vectors: fast enough and no recall loss
KINDS = ("auto", "flat", "hnsw")


class IndexError_(SightwiseError):
    """A search index that cannot be used as asked (wrong bundle, corrupt, missing)."""


@dataclass
class HnswParams:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128


@dataclass
class SearchIndex:
    """Vectors (N, D) unit float32 + `items` metadata + the FAISS index over them."""

    dim: int
    kind: str
    bundle: dict
    hnsw: HnswParams = field(default_factory=HnswParams)
    items: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    next_id: int = 0
    index: faiss.Index | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, bundle: dict, *, kind: str = "auto", n_expected: int = 0,
               flat_limit: int = FLAT_LIMIT, hnsw: HnswParams | None = None) -> SearchIndex:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "auto":
            kind = "flat" if n_expected < flat_limit else "hnsw"
        out = cls(dim=int(dim), kind=kind, bundle=dict(bundle), hnsw=hnsw or HnswParams(),
                  vectors=np.zeros((0, int(dim)), np.float32))
        out.index = out._empty_index()
        return out

    def _empty_index(self) -> faiss.Index:
        if self.kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw.m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.hnsw.ef_construction
            inner.hnsw.efSearch = self.hnsw.ef_search
        return faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return len(self.items)

    # -- updates --------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, records: list[dict]) -> list[int]:
        """Append unit vectors with their metadata records; returns the new ids."""
        x = _unit(vectors, self.dim)
        if len(x) != len(records):
            raise ValueError(f"{len(x)} vectors but {len(records)} records")
        ids = np.arange(self.next_id, self.next_id + len(x), dtype=np.int64)
        if len(x):
            self.index.add_with_ids(x, ids)
        self.items += [{"id": int(i), **r} for i, r in zip(ids, records, strict=True)]
        self.vectors = np.concatenate([self.vectors, x])
        self.next_id += len(x)
        return ids.tolist()

    def remove(self, ids) -> int:
        """Remove items by id; returns how many were removed."""
        drop = {int(i) for i in ids}
        keep = np.array([it["id"] not in drop for it in self.items], bool)
        removed = int((~keep).sum())
        if not removed:
            return 0
        self.items = [it for it, k in zip(self.items, keep, strict=True) if k]
        self.vectors = self.vectors[keep]
        if self.kind == "flat":
            self.index.remove_ids(np.array(sorted(drop), np.int64))
        else:  # HNSW graphs cannot delete a node: rebuild from the stored vectors
            self._rebuild()
        return removed

    def _rebuild(self) -> None:
        self.index = self._empty_index()
        if len(self.items):
            ids = np.array([it["id"] for it in self.items], np.int64)
            self.index.add_with_ids(self.vectors, ids)

    # -- search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k), ids (Q, k)); missing neighbours have id -1."""
        q = _unit(queries, self.dim)
        k = max(1, int(k))
        if not len(self.items):
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        return self.index.search(q, k)

    def item(self, item_id: int) -> dict:
        return self._by_id()[int(item_id)]

    def _by_id(self) -> dict[int, dict]:
        return {it["id"]: it for it in self.items}

    def matches(self, queries: np.ndarray, k: int = 10) -> list[list[dict]]:
        """Ranked matches per query: the item's metadata plus `similarity` and `rank`."""
        sims, ids = self.search(queries, k)
        by_id = self._by_id()
        return [[{"rank": r + 1, "similarity": float(s), **by_id[int(i)]}
                 for r, (s, i) in enumerate(zip(srow, irow, strict=True)) if i >= 0]
                for srow, irow in zip(sims, ids, strict=True)]

    def check_bundle(self, bundle_sha256: str, ref: str = "") -> None:
        """Refuse vectors from a different bundle: they live in another embedding space."""
        if bundle_sha256 != self.bundle.get("bundle_json_sha256"):
            raise IndexError_(
                f"this index was built with bundle {self.bundle.get('ref')!r} "
                f"(bundle.json sha256 {str(self.bundle.get('bundle_json_sha256'))[:12]}), "
                f"not {ref or 'the given bundle'} (sha256 {bundle_sha256[:12]}); "
                "query it with the same bundle or rebuild the index")

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        _atomic(root / "index.faiss", lambda tmp: faiss.write_index(self.index, tmp))
        _atomic(root / "vectors.npy", lambda tmp: _save_npy(tmp, self.vectors))
        atomic_write_json(root / "items.json", self.items)
        atomic_write_json(root / "index.json", {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
            "count": len(self.items), "next_id": self.next_id,
            "hnsw": vars(self.hnsw), "bundle": self.bundle})
        return root

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        root = Path(folder)
        if not (root / "index.json").is_file():
            raise IndexError_(f"{root}: not a search index (no index.json)")
        meta = json.loads((root / "index.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexError_(f"{root}: index format {meta.get('format_version')!r}, "
                              f"this Sightwise reads {FORMAT_VERSION}")
        items = json.loads((root / "items.json").read_text(encoding="utf-8"))
        vectors = np.load(root / "vectors.npy", allow_pickle=False)  # never unpickle
        index = faiss.read_index(str(root / "index.faiss"))
        if not len(items) == len(vectors) == index.ntotal == meta["count"]:
            raise IndexError_(f"{root}: files disagree on the item count (interrupted write?); "
                              "rebuild the index")
        out = cls(dim=int(meta["dim"]), kind=meta["kind"], bundle=meta["bundle"],
                  hnsw=HnswParams(**meta.get("hnsw", {})), items=items,
                  vectors=vectors.astype(np.float32), next_id=int(meta["next_id"]), index=index)
        out.set_ef_search(out.hnsw.ef_search)
        return out

    def set_ef_search(self, ef: int) -> None:
        """HNSW's search breadth (recall vs speed); no effect on a flat index."""
        self.hnsw.ef_search = int(ef)
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = int(ef)


def _unit(x: np.ndarray, dim: int) -> np.ndarray:
    """Rows scaled to unit L2, float32 C-contiguous (what FAISS takes)."""
    x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, dim))
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def _atomic(path: Path, write) -> None:
    """`write(tmp_path)` then rename over `path` (FAISS and numpy write by path)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: str, x: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a bare name
        np.save(f, x, allow_pickle=False)
