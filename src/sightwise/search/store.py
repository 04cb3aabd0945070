"""`SearchIndex`: unit-length embeddings in a FAISS index, with metadata and provenance.

On disk, a folder:

- ``index.faiss``  the FAISS index, an ``IndexIDMap2`` over one of (inner product: on unit
  vectors, cosine)
  - ``flat``   ``IndexFlatIP``: exact;
  - ``hnsw``   ``IndexHNSWFlat``: a graph, no training, ~10-100x faster at recall ~0.95+;
  - ``ivf``    ``IndexIVFFlat``: k-means cells, `nprobe` of them scanned exactly;
  - ``ivfpq``  ``IndexIVFPQ``: cells of product-quantised codes (m bytes a vector instead of
    4 x dim); its candidates are re-ranked exactly against ``vectors.npy`` (`rerank` x k of
    them), so its answers carry exact similarities and little recall is lost.
- ``vectors.npy``  the same vectors (float32, row i = ``items[i]``). They are the source of
  truth: HNSW cannot delete, so `remove` rebuilds it from them, IVF trains on them, IVF-PQ
  re-ranks with them, and the duplicate finder reads them without touching the index.
- ``items.json``   one record per vector: id, path, label, split, sha256, added_at.
- ``index.json``   kind and parameters, dimension, and the bundle that made the vectors
  (reference, bundle.json sha256, preprocessing): a query embedded by any other bundle is
  meaningless, so it is refused.

`kind="auto"` picks by collection size (`choose_kind`): exact below FLAT_LIMIT, HNSW up to
IVFPQ_FROM, IVF-PQ from there (vectors stay on disk, memory-mapped). The figures behind the
thresholds: docs/guides/scale.md.

Incremental updates: ids are stable int64 (``next_id`` grows); `add` appends through
``add_with_ids`` (an IVF index is trained on the first `add` that brings enough vectors,
or when first searched or saved); `remove` is ``remove_ids`` (flat, IVF) or a rebuild (HNSW).
`load(..., mmap=True)` maps the FAISS index (``IO_FLAG_MMAP_IFC`` for flat/HNSW codes,
``IO_FLAG_MMAP`` for IVF lists) and ``vectors.npy`` from disk instead of reading them: a
query server starts at once and the OS pages in what queries touch. The first `add` or
`remove` on a mapped index reads it into memory first (a mapped index is read-only).
Every file is written atomically (temp + rename), ``index.json`` last, so a reader sees a
consistent index unless a writer dies between renames (then `load` refuses mismatched sizes).
"""

from __future__ import annotations

import json
import math
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
IVFPQ_FROM = 1_000_000  # from here 4 x dim bytes a vector in RAM is too much: IVF-PQ + mmap
KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
TRAINED = ("ivf", "ivfpq")


class IndexError_(SightwiseError):
    """A search index that cannot be used as asked (wrong bundle, corrupt, missing)."""


@dataclass
class HnswParams:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128


@dataclass
class IvfParams:
    """nlist 0: chosen from the collection size when trained (`ivf_nlist`); pq_m 0: from
    the dimension (`pq_m_for`); rerank: IVF-PQ re-ranks rerank x k candidates exactly."""

    nlist: int = 0
    nprobe: int = 32
    pq_m: int = 0
    pq_bits: int = 8
    rerank: int = 10


def choose_kind(n: int, flat_limit: int = FLAT_LIMIT, ivfpq_from: int = IVFPQ_FROM) -> str:
    """The index `auto` builds for `n` vectors.

    >>> choose_kind(10_000), choose_kind(200_000), choose_kind(5_000_000)
    ('flat', 'hnsw', 'ivfpq')
    """
    return "flat" if n < flat_limit else "hnsw" if n < ivfpq_from else "ivfpq"


def ivf_nlist(n: int) -> int:
    """Cells for n vectors: the power of two nearest 4 sqrt(n) (FAISS's guideline), 16..65536,
    and small enough that each cell gets 39 training points.

    >>> ivf_nlist(100_000), ivf_nlist(10_000_000), ivf_nlist(500)
    (1024, 16384, 16)
    """
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    return int(max(16, min(65536, target, 2 ** int(math.log2(max(n // 39, 16))))))


def pq_m_for(dim: int) -> int:
    """Sub-quantisers for IVF-PQ (one byte each): about one per 20 dimensions, at least 8,
    a divisor of `dim`.

    >>> pq_m_for(1280), pq_m_for(32), pq_m_for(7), pq_m_for(500)
    (64, 8, 7, 25)
    """
    want = max(min(8, dim), dim // 20)
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - want), m))


@dataclass
class SearchIndex:
    """Vectors (N, D) unit float32 + `items` metadata + the FAISS index over them."""

    dim: int
    kind: str
    bundle: dict
    hnsw: HnswParams = field(default_factory=HnswParams)
    ivf: IvfParams = field(default_factory=IvfParams)
    items: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    next_id: int = 0
    index: faiss.Index | None = None  # None: an IVF index not trained yet
    mapped: Path | None = None  # the folder a memory-mapped (read-only) index came from
    _id_cache: np.ndarray | None = field(default=None, repr=False, compare=False)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, bundle: dict, *, kind: str = "auto", n_expected: int = 0,
               flat_limit: int = FLAT_LIMIT, hnsw: HnswParams | None = None,
               ivf: IvfParams | None = None) -> SearchIndex:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "auto":
            kind = choose_kind(n_expected, flat_limit)
        out = cls(dim=int(dim), kind=kind, bundle=dict(bundle), hnsw=hnsw or HnswParams(),
                  ivf=ivf or IvfParams(), vectors=np.zeros((0, int(dim)), np.float32))
        out.index = None if kind in TRAINED else out._empty_index()
        return out

    def _empty_index(self, train: np.ndarray | None = None) -> faiss.Index:
        ip = faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw.m, ip)
            inner.hnsw.efConstruction = self.hnsw.ef_construction
            inner.hnsw.efSearch = self.hnsw.ef_search
        else:
            inner = self._trained_ivf(train)
        return faiss.IndexIDMap2(inner)

    def _trained_ivf(self, x: np.ndarray) -> faiss.Index:
        """IVF(-PQ) trained on a seeded sample of `x` (64 points a cell is plenty)."""
        # k-means needs a point per centroid: a tiny collection gets fewer cells and,
        # for PQ, fewer bits per code (2^bits centroids per sub-quantiser)
        self.ivf.nlist = min(self.ivf.nlist or ivf_nlist(len(x)), len(x))
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            inner = faiss.IndexIVFFlat(quantizer, self.dim, self.ivf.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            self.ivf.pq_m = self.ivf.pq_m or pq_m_for(self.dim)
            self.ivf.pq_bits = max(1, min(self.ivf.pq_bits, int(math.log2(len(x)))))
            inner = faiss.IndexIVFPQ(quantizer, self.dim, self.ivf.nlist, self.ivf.pq_m,
                                     self.ivf.pq_bits, faiss.METRIC_INNER_PRODUCT)
        rows = np.random.default_rng(0).permutation(len(x))[:64 * self.ivf.nlist]
        inner.train(np.ascontiguousarray(x[np.sort(rows)]))
        inner.nprobe = self.ivf.nprobe
        return inner  # faiss's Python wrapper keeps the quantizer alive with it

    def __len__(self) -> int:
        return len(self.items)

    # -- updates --------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, records: list[dict]) -> list[int]:
        """Append unit vectors with their metadata records; returns the new ids."""
        x = _unit(vectors, self.dim)
        if len(x) != len(records):
            raise ValueError(f"{len(x)} vectors but {len(records)} records")
        self._own()
        ids = np.arange(self.next_id, self.next_id + len(x), dtype=np.int64)
        self.vectors = _append(self.vectors, x)
        self.items += [{"id": int(i), **r} for i, r in zip(ids, records, strict=True)]
        self.next_id += len(x)
        self._id_cache = None
        if self.index is None and self.kind not in TRAINED:
            self.index = self._empty_index()
        # An IVF index not trained yet trains on everything when first searched or saved
        # (training on the first batch of a streamed build would fix too few cells).
        if self.index is not None and len(x):
            self.index.add_with_ids(x, ids)
        return ids.tolist()

    def remove(self, ids) -> int:
        """Remove items by id; returns how many were removed."""
        drop = {int(i) for i in ids}
        keep = np.array([it["id"] not in drop for it in self.items], bool)
        removed = int((~keep).sum())
        if not removed:
            return 0
        self._own()
        self.items = [it for it, k in zip(self.items, keep, strict=True) if k]
        self.vectors = self.vectors[keep]
        self._id_cache = None
        if self.index is None:
            pass  # not trained yet: nothing to update
        elif self.kind == "hnsw":  # HNSW graphs cannot delete a node: rebuild
            self._rebuild()
        else:
            self.index.remove_ids(np.array(sorted(drop), np.int64))
        return removed

    def _rebuild(self) -> None:
        if self.kind in TRAINED and not len(self.items):
            self.index = None
            return
        self.index = self._empty_index(self.vectors if self.kind in TRAINED else None)
        if len(self.items):
            self.index.add_with_ids(np.ascontiguousarray(self.vectors), self._ids())

    def _own(self) -> None:
        """A memory-mapped index is read-only: read it (and the vectors) into memory."""
        if self.mapped is None:
            return
        self.index = faiss.read_index(str(self.mapped / "index.faiss")) if self.index else None
        self.vectors = np.array(self.vectors, np.float32)
        self.mapped = None
        self._apply_search_params()

    def _ids(self) -> np.ndarray:
        """Item ids in row order (ascending: ids grow with every add), cached."""
        if self._id_cache is None or len(self._id_cache) != len(self.items):
            self._id_cache = np.fromiter((it["id"] for it in self.items), np.int64, len(self.items))
        return self._id_cache

    # -- search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k), ids (Q, k)); missing neighbours have id -1."""
        q = _unit(queries, self.dim)
        k = max(1, int(k))
        if not len(self.items):
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.index is None:
            self._rebuild()
        if self.kind != "ivfpq":
            return self.index.search(q, k)
        _, cand = self.index.search(q, k * max(1, self.ivf.rerank))
        return self._rerank(q, cand, k)

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact similarities of the candidates from the stored vectors; the best k."""
        ids = self._ids()
        sims = np.full((len(q), k), -np.inf, np.float32)
        out = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            # ids ascend with rows (added in order); sorted rows read a mapped file forward
            rows = np.sort(np.searchsorted(ids, cand[r][cand[r] >= 0]))
            s = self.vectors[rows] @ q[r]
            order = np.argsort(-s, kind="stable")[:k]
            sims[r, :len(order)] = s[order]
            out[r, :len(order)] = ids[rows][order]
        return sims, out

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
        if self.index is None and len(self.items):
            self._rebuild()
        if self.index is not None:
            _atomic(root / "index.faiss", lambda tmp: faiss.write_index(self.index, tmp))
        else:
            (root / "index.faiss").unlink(missing_ok=True)
        _atomic(root / "vectors.npy", lambda tmp: _save_npy(tmp, self.vectors))
        atomic_write_json(root / "items.json", self.items)
        atomic_write_json(root / "index.json", {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
            "count": len(self.items), "next_id": self.next_id,
            "hnsw": vars(self.hnsw), "ivf": vars(self.ivf), "bundle": self.bundle})
        return root

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = False) -> SearchIndex:
        """Read an index folder; `mmap=True` maps the index and vectors instead (read-only
        until the first add or remove)."""
        root = Path(folder)
        if not (root / "index.json").is_file():
            raise IndexError_(f"{root}: not a search index (no index.json)")
        meta = json.loads((root / "index.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexError_(f"{root}: index format {meta.get('format_version')!r}, "
                              f"this Sightwise reads {FORMAT_VERSION}")
        items = json.loads((root / "items.json").read_text(encoding="utf-8"))
        # never unpickle; mapped vectors are read-only
        vectors = np.load(root / "vectors.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
        has_index = (root / "index.faiss").is_file()
        index = _read_index(root / "index.faiss", meta["kind"], mmap) if has_index else None
        if not len(items) == len(vectors) == meta["count"] or (
                index is not None and index.ntotal != meta["count"]):
            raise IndexError_(f"{root}: files disagree on the item count (interrupted write?); "
                              "rebuild the index")
        out = cls(dim=int(meta["dim"]), kind=meta["kind"], bundle=meta["bundle"],
                  hnsw=HnswParams(**meta.get("hnsw", {})), ivf=IvfParams(**meta.get("ivf", {})),
                  items=items, vectors=vectors if mmap else vectors.astype(np.float32),
                  next_id=int(meta["next_id"]), index=index, mapped=root if mmap else None)
        out._apply_search_params()
        return out

    def set_ef_search(self, ef: int) -> None:
        """HNSW's search breadth (recall vs speed); no effect on other kinds."""
        self.hnsw.ef_search = int(ef)
        self._apply_search_params()

    def set_nprobe(self, nprobe: int) -> None:
        """IVF cells scanned per query (recall vs speed); no effect on other kinds."""
        self.ivf.nprobe = int(nprobe)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.index is None:
            return
        inner = faiss.downcast_index(self.index.index)
        if self.kind == "hnsw":
            inner.hnsw.efSearch = int(self.hnsw.ef_search)
        elif self.kind in TRAINED:
            inner.nprobe = int(self.ivf.nprobe)


def _read_index(path: Path, kind: str, mmap: bool) -> faiss.Index:
    if not mmap:
        return faiss.read_index(str(path))
    # Flat and HNSW codes map with IO_FLAG_MMAP_IFC; IVF lists with IO_FLAG_MMAP.
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if kind in TRAINED else faiss.IO_FLAG_MMAP_IFC)


def _unit(x: np.ndarray, dim: int) -> np.ndarray:
    """Rows scaled to unit L2, float32 C-contiguous (what FAISS takes)."""
    x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, dim))
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def _append(vectors: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`vectors` with rows `x` appended, amortised O(1) a row: the rows live in a buffer
    that doubles when full, so adding a catalogue batch by batch is not quadratic."""
    n, base = len(vectors), vectors.base if isinstance(vectors.base, np.ndarray) else None
    if base is not None and base.ndim == 2 and len(base) >= n + len(x) and \
            vectors.ctypes.data == base.ctypes.data and base.flags.writeable:
        base[n:n + len(x)] = x
        return base[:n + len(x)]
    buf = np.empty((max(2 * n, n + len(x), 1024), vectors.shape[1]), np.float32)
    buf[:n] = vectors
    buf[n:n + len(x)] = x
    return buf[:n + len(x)]


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
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a bundle name
        np.save(f, np.ascontiguousarray(x), allow_pickle=False)
