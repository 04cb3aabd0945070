"""POST /v1/search: visual search over an index loaded at start-up (`--index`).

The index's own bundle embeds the query (its vectors live in that bundle's embedding space,
which need not be the served classifier's); it gets its own onnxruntime session. The upload
runs the shared pipeline (pipeline.py: admission, deadline, the same status codes as
/v1/predict), is embedded and dropped: nothing is stored. Matches carry label, similarity
and their path relative to the indexed folder (never the server's absolute paths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

from fastapi import FastAPI, Query, Request

from sightwise.runtime import Predictor
from sightwise.search.store import SearchIndex
from sightwise.serve.pipeline import pipeline_of
from sightwise.serve.predict_routes import ERRORS, UPLOAD_BODY

MAX_K = 100


@dataclass
class SearchState:
    index: SearchIndex
    predictor: Predictor
    path: Path
    root: str  # the indexed images' common folder; answers give paths relative to it


def load_search(index_path: str | Path, threads: int | None = None) -> SearchState:
    """The index and a predictor for the bundle that built it (refused if it changed)."""
    from sightwise.bundle import load_bundle, sha256_path

    index = SearchIndex.load(index_path)
    bundle = load_bundle(index.bundle["path"])
    index.check_bundle(sha256_path(Path(bundle.path) / "bundle.json"), str(bundle.path))
    folders = [os.path.dirname(str(it.get("path", ""))) for it in index.items]
    try:
        root = os.path.commonpath(folders) if folders else ""
    except ValueError:  # relative and absolute paths mixed, or different drives
        root = ""
    return SearchState(index, Predictor(bundle, threads=threads), Path(index_path), root)


def add_search_routes(app: FastAPI, index_path: str | Path, *,
                      threads: int | None = None) -> SearchState:
    """Load the index now (a bad index fails start-up, not the first request) and add
    POST /v1/search."""
    state = load_search(index_path, threads)
    app.state.search = state
    pipeline = pipeline_of(app)
    pipeline.route("/v1/search")
    bundle_name = _bundle_name(state.index.bundle.get("path", ""))

    @app.post("/v1/search", responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="Indexed images most similar to the uploaded one (multipart field "
              "`file`, or the image as the body)")
    async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K)):
        def matches(image):  # in the decode thread, while the image is held
            return state.index.matches(state.predictor.embed([image], normalize=True), k)[0]

        async def answer(items, t0):
            return {"filename": items[0].filename,
                    "index": {"count": len(state.index), "kind": state.index.kind,
                              "bundle": bundle_name},
                    "matches": [_public(m, state.root) for m in items[0].value]}

        return await pipeline.run(request, answer, prepare=matches, max_images=1)

    return state


def _bundle_name(path: str) -> str:
    p = PurePath(path)
    return p.parent.name if p.name == "bundle" and p.parent.name else p.name


def _public(match: dict, root: str) -> dict:
    out = {k: match.get(k) for k in ("rank", "similarity", "id", "label", "split")}
    path = str(match.get("path") or "")
    try:
        out["path"] = PurePath(os.path.relpath(path, root)).as_posix() if root else PurePath(path).name
    except ValueError:
        out["path"] = PurePath(path).name
    return out
