"""Library calls behind `sightwise index ...`: build, add, remove, query.

The bundle reference (NAME@ALIAS, NAME/VERSION or a folder) is resolved through the
registry; the index remembers it and the sha256 of its bundle.json, and every later call
that embeds (add, query) is refused with any other bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sightwise.bundle import load_bundle, sha256_path
from sightwise.data.decode import decode_image
from sightwise.errors import DataError
from sightwise.registry.resolve import resolve_bundle
from sightwise.runtime import Predictor
from sightwise.search.embed import bundle_provenance, collect_images, embed_records
from sightwise.search.store import FLAT_LIMIT, HnswParams, SearchIndex

Log = Callable[[str], None]


def open_predictor(ref: str | Path, *, threads: int | None = None,
                   batch_size: int = 32) -> tuple[Predictor, dict]:
    bundle = load_bundle(resolve_bundle(ref))
    return Predictor(bundle, threads=threads, batch_size=batch_size), \
        bundle_provenance(bundle, str(ref))


def build_index(images: str | Path, bundle_ref: str | Path, out: str | Path, *,
                kind: str = "auto", labels: str = "top", flat_limit: int = FLAT_LIMIT,
                hnsw: HnswParams | None = None, threads: int | None = None,
                batch_size: int = 32, progress: bool = True,
                log: Log = print) -> SearchIndex:
    """Embed every image under `images` with the bundle and save an index at `out`."""
    predictor, prov = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    records = collect_images(images, labels)
    vectors, kept, errors = embed_records(predictor, records, progress=progress)
    _report_skipped(errors, log)
    index = SearchIndex.create(vectors.shape[1], prov, kind=kind, n_expected=len(kept),
                               flat_limit=flat_limit, hnsw=hnsw)
    index.add(vectors, kept)
    index.save(out)
    log(f"indexed {len(kept)} images ({index.kind}, dim {index.dim}) -> {out}")
    return index


def _report_skipped(errors: list[tuple[str, str]], log: Log) -> None:
    for path, reason in errors:
        log(f"skipped {path}: {reason}")
    if errors:
        log(f"{len(errors)} undecodable file(s) skipped")


def open_index(index_path: str | Path, bundle_ref: str | Path | None = None, *,
               threads: int | None = None, batch_size: int = 32
               ) -> tuple[SearchIndex, Predictor]:
    """The index and a predictor for its bundle (or `bundle_ref`, refused if different)."""
    index = SearchIndex.load(index_path)
    ref = bundle_ref if bundle_ref is not None else index.bundle["path"]
    predictor, prov = open_predictor(ref, threads=threads, batch_size=batch_size)
    index.check_bundle(prov["bundle_json_sha256"], str(ref))
    return index, predictor


def add_images(index_path: str | Path, images: str | Path, *, bundle_ref=None,
               labels: str = "top", threads: int | None = None, progress: bool = True,
               log: Log = print) -> list[int]:
    """Embed and append images; files whose sha256 is already indexed are skipped."""
    index, predictor = open_index(index_path, bundle_ref, threads=threads)
    known = {it["sha256"] for it in index.items}
    records = [r for r in collect_images(images, labels)
               if sha256_path(Path(r["path"])) not in known]
    vectors, kept, errors = embed_records(predictor, records, progress=progress)
    _report_skipped(errors, log)
    ids = index.add(vectors, kept)
    index.save(index_path)
    log(f"added {len(ids)} images; the index holds {len(index)}")
    return ids


def remove_items(index_path: str | Path, paths_or_ids: list[str], *,
                 log: Log = print) -> int:
    """Remove by id, by exact indexed path, or every item under a folder path."""
    index = SearchIndex.load(index_path)
    wanted = set()
    for key in paths_or_ids:
        if key.isdigit():
            wanted.add(int(key))
            continue
        p = str(Path(key).resolve()) if Path(key).exists() else key
        wanted |= {it["id"] for it in index.items
                   if it["path"] in (key, p) or it["path"].startswith(p.rstrip("/") + "/")}
    n = index.remove(wanted)
    index.save(index_path)
    log(f"removed {n} items; the index holds {len(index)}")
    return n


def query_paths(index: SearchIndex, predictor: Predictor, paths: list[str | Path],
                k: int = 10) -> list[list[dict]]:
    """Ranked matches for each image file."""
    images = []
    for p in paths:
        images.append(decode_image(p))  # ImageDecodeError names the path
    if not images:
        raise DataError("no query images")
    return index.matches(predictor.embed(images, normalize=True), k)


def index_for(source: str | Path, bundle_ref: str | Path | None = None, *,
              labels: str = "top", threads: int | None = None, progress: bool = True,
              log: Log = print) -> SearchIndex:
    """An index folder as is, or images embedded into an in-memory flat index."""
    if (Path(source) / "index.json").is_file():
        return SearchIndex.load(source)
    if bundle_ref is None:
        raise DataError(f"{source}: not an index; pass --bundle to embed these images")
    predictor, prov = open_predictor(bundle_ref, threads=threads)
    vectors, kept, errors = embed_records(predictor, collect_images(source, labels),
                                          progress=progress)
    _report_skipped(errors, log)
    index = SearchIndex.create(vectors.shape[1], prov, kind="flat")
    index.add(vectors, kept)
    return index
