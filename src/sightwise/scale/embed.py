"""`sightwise index build` at scale: images streamed through the bounded decode pool (or Ray
actors) into a search index, batch by batch.

The labels come from the folder layout as before (`search.embed.collect_images`); the
vectors are added as each batch finishes; `--index auto` picks the index type from the
collection's size and says which (`search.store.choose_kind`). Undecodable files are
reported by path and left out, as `index build` always did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sightwise.data.preprocess import normalize
from sightwise.runtime import Predictor
from sightwise.scale.batch import default_workers, file_preparer
from sightwise.scale.sources import Loaded, batched, decoded
from sightwise.search.api import open_predictor
from sightwise.search.embed import collect_images
from sightwise.search.store import FLAT_LIMIT, IVFPQ_FROM, HnswParams, IvfParams, SearchIndex

Log = Callable[[str], None]


def embed_items(predictor: Predictor, items: list[Loaded]) -> dict:
    """Columns path, sha256, error ("" when none) and vector (N, D) unit float32 (zeros for
    the files that failed) of one batch: the same numbers as `Predictor.embed(...,
    normalize=True)` on the decoded images."""
    dim = int(predictor.bundle.meta.num_features or 0)
    ok = [i for i, it in enumerate(items) if it.array is not None]
    vectors = np.zeros((len(items), dim), np.float32)
    if ok:
        x = normalize(np.stack([items[i].array for i in ok]), predictor.preprocessing)
        emb = predictor.run(x, ["embedding"])["embedding"].astype(np.float32)
        vectors[ok] = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return {"path": np.array([it.path for it in items], object),
            "sha256": np.array([it.sha256 or "" for it in items], object),
            "error": np.array([it.error or "" for it in items], object),
            "vector": vectors}


def embed_columns(predictor: Predictor, paths: Iterable[str], *, engine: str = "local",
                  batch_size: int = 32, threads: int | None = None, workers: int | None = None,
                  ray_address: str | None = None) -> Iterator[dict]:
    """Column batches of `embed_items` over the files, on this machine or on Ray."""
    if engine == "ray":
        from sightwise.scale.ray_engine import EmbedActor, ray_map

        yield from ray_map(paths, EmbedActor, {"bundle": str(predictor.bundle.path),
                                               "batch_size": batch_size},
                           address=ray_address, batch_size=batch_size, threads=threads or 1,
                           on_refused=lambda items: embed_items(predictor, items))
        return
    if engine != "local":
        raise ValueError(f"engine must be local or ray, got {engine!r}")
    stream = decoded(paths, file_preparer(predictor.preprocessing),
                     workers=workers or default_workers(), window=2 * batch_size)
    for items in batched(stream, batch_size):
        yield embed_items(predictor, items)


def build_index(images: str | Path, bundle_ref: str | Path, out: str | Path, *,
                index: str = "auto", engine: str = "local", labels: str = "top",
                flat_limit: int = FLAT_LIMIT, hnsw: HnswParams | None = None,
                ivf: IvfParams | None = None, threads: int | None = None,
                batch_size: int = 32, workers: int | None = None,
                ray_address: str | None = None, progress: bool = True,
                log: Log = print) -> SearchIndex:
    """Embed every image under `images` with the bundle and save an index at `out`."""
    predictor, prov = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    records = {r["path"]: r for r in collect_images(images, labels)}
    dim = int(predictor.bundle.meta.num_features)
    idx = SearchIndex.create(dim, prov, kind=index, n_expected=len(records),
                             flat_limit=flat_limit, hnsw=hnsw, ivf=ivf)
    if index == "auto":
        log(f"index auto: {len(records):,} images -> {idx.kind} (exact below {flat_limit:,}, "
            f"HNSW below {IVFPQ_FROM:,}, IVF-PQ from there)")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    skipped = 0
    bar = tqdm(total=len(records), unit="img", desc=f"embedding ({engine})", disable=not progress)
    for cols in embed_columns(predictor, list(records), engine=engine, batch_size=batch_size,
                              threads=threads, workers=workers, ray_address=ray_address):
        good = [i for i, e in enumerate(cols["error"]) if not e]
        for i in (i for i, e in enumerate(cols["error"]) if e):
            log(f"skipped {cols['path'][i]}: {cols['error'][i]}")
        skipped += len(cols["path"]) - len(good)
        idx.add(cols["vector"][good], [{**records[cols["path"][i]], "sha256": cols["sha256"][i],
                                        "added_at": now} for i in good])
        bar.update(len(cols["path"]))
    bar.close()
    if skipped:
        log(f"{skipped} undecodable file(s) skipped")
    idx.save(out)
    log(f"indexed {len(idx)} images ({idx.kind}, dim {idx.dim}) -> {out}")
    return idx
