"""POST /v1/search: visual search over an index loaded at start-up (`--index`).

The index's own bundle embeds the query (its vectors live in that bundle's embedding space,
which need not be the served classifier's); it gets its own onnxruntime session. The upload
is decoded, embedded and dropped: nothing is stored, so the answer carries label, path and
similarity of the matches, never pixels.

Wiring (in create_app, after `_add_routes(app)`)::

    if index is not None:
        add_search_routes(app, index)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Query, Request

from sightwise.runtime import Predictor
from sightwise.search.store import SearchIndex
from sightwise.serve.limits import Limits, decode_upload, read_uploads
from sightwise.serve.schemas import ApiError

MAX_K = 100


@dataclass
class SearchState:
    index: SearchIndex
    predictor: Predictor
    path: Path


def load_search(index_path: str | Path, threads: int | None = None) -> SearchState:
    """The index and a predictor for the bundle that built it (refused if it changed)."""
    from sightwise.bundle import load_bundle, sha256_path

    index = SearchIndex.load(index_path)
    bundle = load_bundle(index.bundle["path"])
    index.check_bundle(sha256_path(Path(bundle.path) / "bundle.json"), str(bundle.path))
    return SearchState(index, Predictor(bundle, threads=threads), Path(index_path))


def add_search_routes(app: FastAPI, index_path: str | Path, *,
                      threads: int | None = None) -> SearchState:
    """Load the index now (a bad index fails start-up, not the first request) and add
    POST /v1/search. Uses the app's request limits when create_app made it."""
    state = load_search(index_path, threads)
    app.state.search = state

    def limits(request: Request) -> Limits:
        sw = getattr(request.app.state, "sw", None)
        return sw.limits if sw is not None else Limits()

    @app.post("/v1/search", summary="Indexed images most similar to the uploaded one "
              "(multipart field `file`)", openapi_extra={"requestBody": {
                  "required": True, "content": {"multipart/form-data": {"schema": {
                      "type": "object", "required": ["file"], "properties": {
                          "file": {"type": "string", "format": "binary"}}}}}}})
    async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K)):
        lim = limits(request)
        uploads = await read_uploads(request.headers.get("content-type"), request.stream(),
                                     lim)
        if len(uploads) != 1:
            raise ApiError(422, "one_image", "send exactly one image in the field 'file'")
        data, filename = uploads[0].data, uploads[0].filename
        uploads.clear()

        def work():
            image = decode_upload(data, lim.max_pixels)
            return state.index.matches(state.predictor.embed([image], normalize=True), k)[0]

        matches = await anyio.to_thread.run_sync(work)
        return {"filename": filename, "index": {"count": len(state.index),
                                                "kind": state.index.kind,
                                                "bundle": state.index.bundle.get("ref")},
                "matches": [_public(m) for m in matches]}

    return state


def _public(match: dict) -> dict:
    return {k: match.get(k) for k in ("rank", "similarity", "id", "label", "path", "split")}
