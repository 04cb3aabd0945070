"""POST /v1/inspect: defect inspection with a detector bundle (torch-free).

The request body is the image file itself (any Content-Type); the answer is JSON with the
score, the threshold and the verdict, or with `?format=png` the heat-map overlay at the
image's own size (score, verdict and threshold in the X-Anomaly-Score, X-Verdict and
X-Threshold headers). Mounted by `add_inspect_routes(app, detector_dir)`.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from sightwise.anomaly.detector import Detector, png_bytes
from sightwise.data.decode import decode_image
from sightwise.errors import ImageDecodeError

MAX_BODY = 32 << 20  # bytes; larger uploads get 413 before decoding


def add_inspect_routes(app: FastAPI, detector_dir: str | Path, *,
                       threads: int | None = None) -> Detector:
    """Load the detector once (bundle hashes verified) and add POST /v1/inspect."""
    detector = Detector(detector_dir, threads=threads)
    name = Path(detector_dir).name

    def _run(data: bytes, fmt: str):
        try:
            image = decode_image(data)
        except ImageDecodeError as exc:
            raise HTTPException(400, f"bad image: {exc}") from None
        r = detector.inspect([image])[0]
        if fmt == "png":
            return Response(png_bytes(detector.overlay(image, r.patch_map)), media_type="image/png",
                            headers={"X-Anomaly-Score": f"{r.score:.6g}", "X-Verdict": r.verdict,
                                     "X-Threshold": f"{detector.threshold:.6g}"})
        return JSONResponse({"detector": name, "score": r.score, "threshold": detector.threshold,
                             "verdict": r.verdict, "width": image.width, "height": image.height})

    @app.post("/v1/inspect", summary="Defect score, verdict and heat map for one image "
              "(request body: the image file)")
    async def inspect(request: Request, format: str = Query("json", pattern="^(json|png)$")):
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise HTTPException(413, f"image larger than {MAX_BODY} bytes")
        if not data:
            raise HTTPException(400, "empty request body: send the image file")
        return await anyio.to_thread.run_sync(_run, bytes(data), format)

    return detector
