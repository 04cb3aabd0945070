"""One-call helpers for the surfaces that predict: `sightwise predict ... --log DIR` and the
server's request path. They run the graph once for both products the log needs (calibrated
probabilities and the embedding) and hand the batch to `MonitorLog.observe`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sightwise.core import sha256_bytes, softmax, top_k_indices
from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError
from sightwise.monitor.live import MonitorLog
from sightwise.types import ClassScore, Prediction


def predict_paths_logged(predictor, paths: Sequence[str | Path], mlog: MonitorLog, *,
                         model: str, version, top_k: int = 3) -> list[Prediction]:
    """What `Predictor.predict_paths` answers (one Prediction per path, an `error` for an
    undecodable file), with every answered image appended to the prediction log: its sha256,
    file path, calibrated probabilities, embedding, and per-image share of the batch time."""
    results: list[Prediction] = []
    bs = predictor.batch_size
    for start in range(0, len(paths), bs):
        chunk = [str(p) for p in paths[start:start + bs]]
        ok, images, raw, errors = [], [], [], {}
        for i, p in enumerate(chunk):
            try:
                data = Path(p).read_bytes()
                images.append(decode_image(data))
                raw.append(data)
                ok.append(i)
            except (OSError, ImageDecodeError) as exc:
                errors[i] = str(exc)
        t0 = time.perf_counter()
        if images:
            out = predictor.run(predictor.preprocess(images), ["logits", "embedding"])
            probs = softmax(out["logits"], predictor.temperature)
            ms = (time.perf_counter() - t0) * 1000 / len(images)
            mlog.observe(bundle=predictor.bundle, model=model, version=version, probs=probs,
                         embeddings=out["embedding"], sha256s=[sha256_bytes(d) for d in raw],
                         latencies_ms=[ms] * len(images), sources=[chunk[i] for i in ok],
                         images=raw if mlog.log.keep_images else None)
        row = {i: probs[j] for j, i in enumerate(ok)} if images else {}
        for i, p in enumerate(chunk):
            if i in errors:
                results.append(Prediction(source=p, error=errors[i]))
            else:
                top = tuple(ClassScore(predictor.classes[c], float(row[i][c]))
                            for c in top_k_indices(row[i], top_k))
                results.append(Prediction(source=p, top=top))
    return results


def observe_served(mlog: MonitorLog, model, probs, embeddings, uploads: Sequence[bytes] | None,
                   sha256s: Sequence[str], latencies_ms: Sequence[float]) -> int:
    """The server's call after a batch is answered (`model` is serve's LoadedModel: name,
    version, path). `uploads` are the raw request bytes, passed only with --keep-images.
    Never raises; returns the number of records queued."""
    return mlog.observe(bundle=model.path, model=model.name, version=model.version,
                        probs=np.asarray(probs), embeddings=embeddings, sha256s=list(sha256s),
                        latencies_ms=list(latencies_ms),
                        images=list(uploads) if uploads is not None else None)
