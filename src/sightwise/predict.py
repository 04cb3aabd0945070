"""Predict with a bundle's ONNX graph through `sightwise.runtime`: what the server and the
edge device answer, with no torch. A bundle without a usable graph gets one clear line
(`Bundle.graph` is the rule). Each unreadable image gets its own error; the others are
still answered.

Three ways in:
- `predict_files(ref, paths)`: a list of Predictions (the Python API over `Predictor`);
- `predict_stream(ref, inputs)`: Predictions one at a time over files, folders, CSV lists
  and globs, decoded ahead by a bounded pool (what `sightwise predict` prints);
- `predict_to_file(ref, inputs, out)`: batch prediction into CSV or Parquet, streamed,
  resumable, on this machine or on Ray (`sightwise predict ... --out`), see
  docs/guides/scale.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sightwise.bundle import Bundle
from sightwise.core import sha256_path
from sightwise.runtime import Predictor
from sightwise.types import ClassScore, Prediction

ENGINES = ("local", "ray")
# Called with each batch of written rows (dicts with the output columns). The prediction
# log (`--log DIR`, issue #9) plugs in here.
Observer = Callable[[list[dict]], None]


def open_predictor(bundle_ref: str | Path, *, threads: int | None = None, int8: bool = False,
                   batch_size: int = 32) -> Predictor:
    """A Predictor for a bundle folder, a run folder, NAME@ALIAS or NAME/VERSION; the
    bundle is verified (and, from the registry, checked against what was registered)."""
    from sightwise.registry.resolve import open_bundle

    return Predictor(open_bundle(bundle_ref), int8=int8, threads=threads, batch_size=batch_size)


def predict_files(bundle_ref: str | Path, paths: Sequence[str | Path], *, top_k: int = 3,
                  threads: int | None = None, batch_size: int = 32) -> list[Prediction]:
    """One calibrated top-k Prediction per path, in order."""
    predictor = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    return predictor.predict_paths([str(p) for p in paths], top_k=top_k)


def model_version(bundle_ref: str | Path, bundle: Bundle) -> str:
    """NAME/VERSION for a registry reference; for a folder the server's words for it,
    local-<first 12 hex digits of bundle.json's sha256> (which lists every file's hash)."""
    from sightwise.registry.resolve import parse_ref

    text = str(bundle_ref)
    parsed = None if Path(text).is_dir() else parse_ref(text)
    if parsed is not None:
        return f"{parsed[0]}/{Path(bundle.path).name}"  # registry folders are NAME/<version>
    return f"local-{sha256_path(Path(bundle.path) / 'bundle.json')[:12]}"


def predict_stream(bundle_ref: str | Path, inputs: Sequence[str | Path], *, top_k: int = 3,
                   recursive: bool = False, threads: int | None = None, batch_size: int = 32,
                   workers: int | None = None) -> Iterator[Prediction]:
    """Predictions one by one, in input order (folders walked in sorted order)."""
    from sightwise.scale.batch import local_rows
    from sightwise.scale.sources import iter_paths

    predictor = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    for rows in local_rows(predictor, iter_paths(inputs, recursive=recursive), top_k=top_k,
                           model_version="", batch_size=batch_size, workers=workers):
        yield from (row_prediction(r, top_k) for r in rows)


def log_identity(bundle_ref: str | Path, bundle: Bundle) -> tuple[str, int | str]:
    """(model name, version) as `sightwise serve` logs them: the registry's name and version
    number for NAME@ALIAS / NAME/VERSION; for a folder its name (the run's for RUN/bundle)
    and local-<sha>."""
    from sightwise.registry.resolve import parse_ref

    text = str(bundle_ref)
    parsed = None if Path(text).is_dir() else parse_ref(text)
    if parsed is not None:
        version = Path(bundle.path).name
        return parsed[0], int(version) if version.isdigit() else version
    folder = Path(bundle.path)
    name = folder.parent.name if folder.name == "bundle" and folder.parent.name else folder.name
    return name, model_version(bundle_ref, bundle)


def predict_logged(bundle_ref: str | Path, inputs: Sequence[str | Path], log_dir: str | Path, *,
                   top_k: int = 3, recursive: bool = False, threads: int | None = None,
                   batch_size: int = 32, keep_images: bool = False,
                   chunk: int = 1024) -> Iterator[Prediction]:
    """`predict_stream`'s predictions, each answered image also appended to the prediction
    log at `log_dir` as `sightwise serve --log DIR` records it (so batch jobs are monitored
    too: drift windows and alerts run as the records are written)."""
    from sightwise.monitor.hooks import predict_paths_logged
    from sightwise.monitor.live import MonitorLog
    from sightwise.scale.sources import batched, iter_paths

    predictor = open_predictor(bundle_ref, threads=threads, batch_size=batch_size)
    name, version = log_identity(bundle_ref, predictor.bundle)
    with MonitorLog(log_dir, keep_images=keep_images) as mlog:
        for paths in batched(iter_paths(inputs, recursive=recursive), chunk):
            yield from predict_paths_logged(predictor, list(paths), mlog, model=name,
                                            version=version, top_k=top_k)


def row_prediction(row: dict, top_k: int) -> Prediction:
    """An output row as the Prediction record the API and `--json` use."""
    top = []
    for k in range(1, top_k + 1):
        suffix = "" if k == 1 else f"_{k}"
        if row.get(f"label{suffix}") is not None:
            top.append(ClassScore(row[f"label{suffix}"], float(row[f"probability{suffix}"])))
    return Prediction(source=row["path"], top=tuple(top), error=row.get("error"))


def predict_to_file(bundle_ref: str | Path, inputs: Sequence[str | Path], out: str | Path, *,
                    recursive: bool = False, resume: bool = False, engine: str = "local",
                    ray_address: str | None = None, top_k: int = 3, threads: int | None = None,
                    batch_size: int = 32, workers: int | None = None, progress: bool = True,
                    observer: Observer | None = None, log_dir: str | Path | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Write one row per input file to `out` (.csv or .parquet) as batches finish; with
    `resume`, skip the files `out` already holds. Returns a summary (counts, rate).

    With `log_dir` (local engine) every answered image is also appended to the prediction
    log there, as `sightwise serve --log DIR` records it."""
    from tqdm import tqdm

    from sightwise.registry.resolve import open_bundle
    from sightwise.scale.batch import columns
    from sightwise.scale.output import RowWriter
    from sightwise.scale.sources import count_paths, iter_paths

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if log_dir is not None and engine != "local":
        raise ValueError("--log needs the local engine (the Ray actors return rows, not the "
                         "embeddings the prediction log records)")
    bundle = open_bundle(bundle_ref)
    bundle.graph()  # refuse an unusable bundle before touching the output
    version = model_version(bundle_ref, bundle)
    _warn_not_recursive(inputs, recursive, log)
    writer = RowWriter(out, columns(top_k), resume=resume)
    done = writer.done
    skip = (lambda p: p in done) if len(done) else None
    if len(done):
        log(f"resuming {out}: {len(done)} file(s) already written are skipped")
    total = count_paths(inputs, recursive=recursive, skip=skip) if progress else None
    paths = (p for p in iter_paths(inputs, recursive=recursive) if skip is None or not skip(p))
    mlog = None
    if log_dir is not None:
        from sightwise.monitor.live import MonitorLog

        mlog = MonitorLog(log_dir)
    rows_iter = _engine_rows(engine, bundle, paths, version=version, top_k=top_k,
                             threads=threads, batch_size=batch_size, workers=workers,
                             ray_address=ray_address,
                             hook=_log_hook(mlog, bundle_ref, bundle) if mlog else None)
    n = errors = 0
    t0 = time.perf_counter()
    try:
        with tqdm(total=total, unit="img", desc=f"predict ({engine})", disable=not progress,
                  smoothing=0.1) as bar:
            for rows in rows_iter:
                writer.write(rows)
                if observer is not None:
                    observer(rows)
                n += len(rows)
                errors += sum(r["error"] is not None for r in rows)
                bar.update(len(rows))
        seconds = time.perf_counter() - t0
        writer.finish()
    finally:
        writer.close()
        if mlog is not None:
            mlog.close()
    return {"out": str(out), "engine": engine, "model_version": version, "written": n,
            "errors": errors, "already_done": len(done), "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 2) if seconds > 0 else None}


def _log_hook(mlog, bundle_ref, bundle: Bundle):
    """The local engine's batch hook that appends each batch to the prediction log."""
    name, version = log_identity(bundle_ref, bundle)

    def hook(items, probs, embeddings, ms_per_image: float) -> None:
        mlog.observe(bundle=bundle, model=name, version=version, probs=probs,
                     embeddings=embeddings, sha256s=[it.sha256 for it in items],
                     latencies_ms=[ms_per_image] * len(items), sources=[it.path for it in items])

    return hook


def _engine_rows(engine: str, bundle: Bundle, paths, *, version: str, top_k: int,
                 threads: int | None, batch_size: int, workers: int | None,
                 ray_address: str | None, hook=None) -> Iterator[list[dict]]:
    from sightwise.scale.batch import columns, error_rows, local_rows

    if engine == "local":
        predictor = Predictor(bundle, threads=threads, batch_size=batch_size)
        return local_rows(predictor, paths, top_k=top_k, model_version=version,
                          batch_size=batch_size, workers=workers, hook=hook)
    from sightwise.scale.ray_engine import PredictActor, ray_map, to_columns, to_rows

    names = columns(top_k)
    cols = ray_map(paths, PredictActor, {"bundle": str(bundle.path), "top_k": top_k,
                                         "model_version": version, "batch_size": batch_size},
                   address=ray_address, batch_size=batch_size, threads=threads or 1,
                   on_refused=lambda items: to_columns(
                       error_rows(items, top_k=top_k, model_version=version), names))
    return (to_rows(c, names) for c in cols)


def _warn_not_recursive(inputs, recursive: bool, log) -> None:
    """A folder of class folders without --recursive would give zero rows: say so."""
    from sightwise.scale.sources import subfolders

    if recursive:
        return
    for item in [inputs] if isinstance(inputs, str | Path) else inputs:
        if Path(item).is_dir() and (n := subfolders(Path(item))):
            log(f"{item}: {n} sub-folder(s) not searched; pass --recursive to include them")
