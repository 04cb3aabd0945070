"""POST /v1/inspect: defect inspection with a detector bundle (torch-free, `--detector`).

The upload runs the shared pipeline (pipeline.py: multipart field `file` or the image as
the body, admission, deadline, the same status codes as /v1/predict). The answer is JSON
with the score, the threshold and the verdict, or with `?format=png` the heat map over the
image (at most 1024 pixels a side) with its colour legend, the score, verdict and
threshold in the X-Anomaly-Score, X-Verdict and X-Threshold headers.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from sightwise.anomaly.detector import Detector, png_bytes
from sightwise.heatmap import with_legend
from sightwise.serve.pipeline import pipeline_of
from sightwise.serve.predict_routes import ERRORS, UPLOAD_BODY


def add_inspect_routes(app: FastAPI, detector_dir: str | Path, *,
                       threads: int | None = None) -> Detector:
    """Load the detector once (bundle hashes verified) and add POST /v1/inspect."""
    detector = Detector(detector_dir, threads=threads)
    name = Path(detector_dir).resolve().name
    pipeline = pipeline_of(app)
    pipeline.route("/v1/inspect")

    def overlay_png(image, patch_map) -> bytes:
        figure = detector.overlay(image, patch_map)
        return png_bytes(with_legend(figure, "Anomaly heat map (the threshold is mid-scale)",
                                     "normal", "anomalous"))

    @app.post("/v1/inspect", responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="Defect score, verdict and heat map for one image (multipart field "
              "`file`, or the image as the body)")
    async def inspect(request: Request, format: str = Query("json", pattern="^(json|png)$")):
        def score(image):  # in the decode thread, while the image is held
            return detector.inspect([image])[0], image.size

        async def answer(items, t0):
            result, (width, height) = items[0].value
            if format == "png":
                png = await anyio.to_thread.run_sync(overlay_png, items[0].display,
                                                     result.patch_map)
                return Response(png, media_type="image/png", headers={
                    "X-Anomaly-Score": f"{result.score:.6g}", "X-Verdict": result.verdict,
                    "X-Threshold": f"{detector.threshold:.6g}", "Cache-Control": "no-store"})
            return JSONResponse({"detector": name, "score": result.score,
                                 "threshold": detector.threshold, "verdict": result.verdict,
                                 "width": width, "height": height})

        return await pipeline.run(request, answer, prepare=score, max_images=1,
                                  display=format == "png")

    return detector
