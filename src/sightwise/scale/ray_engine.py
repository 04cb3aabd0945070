"""`--engine ray`: the same work on Ray Data, for when one machine is not enough.

Ray Data's documented batch-inference pattern (docs.ray.io, "End-to-end: Offline Batch
Inference"): `read_binary_files` (paths kept) -> `map_batches` with a pool of actors, each
of which loads the bundle's ONNX graph once in its constructor -> results. Here the results
stream back to the driver (`iter_batches`) and go through the same writer as the
single-machine engine (CSV, or Parquet built from the journal), so `--resume` and the output
format do not depend on the engine. A result row is ~300 bytes: even 10 million images a
day are 35 rows a second through the driver, while the decoding and the network, the real
cost, run on the cluster.

Every actor builds its rows with the same functions as the local engine
(`sightwise.scale.batch.predict_rows`), so both engines give the same rows (onnxruntime may
round the last float bits differently for another batch composition).

Inputs go in chunks of `chunk_files` paths per Ray Dataset, so the driver never holds the
whole listing. Files that `precheck` refuses (missing, not a regular file, too large,
unreadable) never reach Ray: their error rows are made in the driver, with the same words.

Ray is imported inside functions only: `sightwise.scale` imports without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sightwise.errors import SightwiseError
from sightwise.scale.sources import Loaded, batched, precheck

CHUNK_FILES = 20_000  # paths per Ray Dataset: bounds the driver's memory, amortises start-up


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None):
    """Connect to the cluster at `address` (e.g. ray://head:10001, or "auto"), or start a
    local one sized to this machine with no dashboard; shut down only what we started."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise SightwiseError("--engine ray needs Ray Data: pip install 'sightwise[scale]'") from None

    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines per dataset
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours shows rate and ETA over the whole run
        yield ray
    finally:
        ray.shutdown()


def pool_size(ray, threads: int) -> int:
    """Actors that fit the cluster with one CPU left for the read tasks (with every CPU
    held by an actor, nothing reads and the pipeline stalls)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, (cpus - 1) // max(1, threads))


def ray_map(paths: Iterable[str], actor: type, kwargs: dict, *, address: str | None = None,
            batch_size: int = 32, threads: int = 1, actors: int | None = None,
            chunk_files: int = CHUNK_FILES,
            on_refused: Callable[[list[Loaded]], dict] | None = None) -> Iterator[dict]:
    """Column batches (dict of equal-length numpy arrays) of `actor(**kwargs)` over the
    files, in whatever order Ray finishes them. Refused files go to `on_refused`, whose
    columns are yielded in their place."""
    with ray_session(address) as ray:
        size = actors or pool_size(ray, threads)
        for chunk in batched(paths, chunk_files):
            good, refused = [], []
            for p in chunk:
                reason = precheck(p)
                if reason is None:
                    good.append(p)
                else:
                    refused.append(Loaded(p, error=reason))
            if refused and on_refused is not None:
                yield on_refused(refused)
            if not good:
                continue
            given = {os.path.abspath(p): p for p in good}  # Ray reports absolute paths
            ds = ray.data.read_binary_files(list(given), include_paths=True)
            ds = ds.map_batches(actor, fn_constructor_kwargs={**kwargs, "threads": threads},
                                compute=ray.data.ActorPoolStrategy(size=size),
                                num_cpus=threads, batch_size=batch_size, batch_format="numpy")
            for cols in ds.iter_batches(batch_size=None, batch_format="numpy"):
                cols["path"] = np.array([given.get(p, p) for p in cols["path"]], object)
                yield cols


# -- actors: each loads its model once ----------------------------------------------------


class PredictActor:
    """Batch prediction rows (the columns of `sightwise.scale.batch.columns`)."""

    def __init__(self, bundle: str, top_k: int, model_version: str, threads: int = 1,
                 batch_size: int = 32):
        from sightwise.runtime import Predictor
        from sightwise.scale.batch import bytes_preparer

        self.predictor = Predictor(bundle, threads=threads, batch_size=batch_size)
        self.prepare = bytes_preparer(self.predictor.preprocessing)
        self.top_k, self.model_version = int(top_k), model_version

    def __call__(self, batch: dict) -> dict:
        from sightwise.scale.batch import columns, predict_rows

        items = [self.prepare(str(p), bytes(b)) for p, b in zip(batch["path"], batch["bytes"],
                                                                 strict=True)]
        rows = predict_rows(self.predictor, items, top_k=self.top_k,
                            model_version=self.model_version)
        return to_columns(rows, columns(self.top_k))


class EmbedActor:
    """Unit embeddings for `index build`: path, sha256, error, vector (D floats)."""

    def __init__(self, bundle: str, threads: int = 1, batch_size: int = 32):
        from sightwise.runtime import Predictor
        from sightwise.scale.batch import bytes_preparer

        self.predictor = Predictor(bundle, threads=threads, batch_size=batch_size)
        self.prepare = bytes_preparer(self.predictor.preprocessing)

    def __call__(self, batch: dict) -> dict:
        from sightwise.scale.embed import embed_items

        items = [self.prepare(str(p), bytes(b)) for p, b in zip(batch["path"], batch["bytes"],
                                                                 strict=True)]
        return embed_items(self.predictor, items)


class InspectActor:
    """Defect scores for `inspect score`: path, score, verdict, error, overlay PNG bytes."""

    def __init__(self, detector: str, root: str, threads: int = 1):
        from sightwise.anomaly.detector import Detector

        self.detector = Detector(detector, threads=threads)
        self.root = Path(root)

    def __call__(self, batch: dict) -> dict:
        from sightwise.scale.inspect import inspect_items
        from sightwise.scale.sources import load_bytes

        items = [load_bytes(str(p), bytes(b)) for p, b in zip(batch["path"], batch["bytes"],
                                                              strict=True)]
        return inspect_items(self.detector, items, self.root)


# -- columns <-> rows ----------------------------------------------------------------------


def to_columns(rows: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """Rows -> numpy columns with one type per column across all batches (Arrow needs
    that): strings ("" for none) and float64 (NaN for none)."""
    out = {}
    for n in names:
        vals = [r.get(n) for r in rows]
        if n.startswith("probability"):
            out[n] = np.array([np.nan if v is None else float(v) for v in vals], np.float64)
        else:
            out[n] = np.array(["" if v is None else str(v) for v in vals], object)
    return out


def to_rows(cols: dict, names: list[str]) -> list[dict]:
    """The inverse of `to_columns`: "" and NaN back to None."""
    n = len(cols[names[0]]) if names else 0
    rows = []
    for i in range(n):
        row = {}
        for name in names:
            v = cols[name][i]
            if isinstance(v, float | np.floating):
                row[name] = None if np.isnan(v) else float(v)
            else:
                row[name] = None if v == "" else str(v)
        rows.append(row)
    return rows
