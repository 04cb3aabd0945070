"""Response shapes of the HTTP API (pydantic, so /openapi.json documents them) and the
one error type every failure is answered with.

Contract (DESIGN.md, issue #6): success bodies name the model and the version that computed
them; every error is ``{"error": {"code": ..., "message": ...}}`` with a 4xx status for bad
input (never a 500) and 503 + Retry-After when the server is busy or not ready.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ApiError(Exception):
    """An expected failure, answered as JSON with `status` (and extra `headers`)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict:
        """
        >>> ApiError(415, "unsupported_media_type", "send PNG").body()
        {'error': {'code': 'unsupported_media_type', 'message': 'send PNG'}}
        """
        return {"error": {"code": self.code, "message": self.message}}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. `payload_too_large`.")
    message: str = Field(description="One sentence for a person.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelRef(BaseModel):
    name: str
    version: int | str = Field(description="Registry version, or `local-<sha>` for a bundle "
                                           "served from a folder.")


class ClassProbability(BaseModel):
    label: str
    probability: float = Field(description="Calibrated (temperature-scaled) probability.")


class ImageResult(BaseModel):
    filename: str | None = Field(None, description="As sent by the client (never stored).")
    predictions: list[ClassProbability]
    ms: float = Field(description="Milliseconds from upload received to answer, this image.")


class PredictResponse(BaseModel):
    model: ModelRef
    results: list[ImageResult]


class HeatmapResponse(BaseModel):
    model: ModelRef
    label: str
    probability: float
    class_index: int
    heatmap: list[list[float]] = Field(description="Class activation map at feature "
                                                   "resolution, rows of [0, 1] values.")
    ms: float


class SwapError(BaseModel):
    version: int | str | None
    message: str = Field(description="What failed, without file names (details: the server "
                                     "log and GET /v1/admin/status).")
    at: str


class ModelInfo(BaseModel):
    name: str
    version: int | str
    label: str = Field(description="A name for people: `parts v3`, or for a bundle served "
                                   "from a folder its name, architecture and export date.")
    classes: list[str]
    metrics: dict
    loaded_at: str
    bundle_created: str | None = None
    last_swap_error: SwapError | None = None


class ReloadResponse(BaseModel):
    swapped: bool
    model: ModelInfo


class Health(BaseModel):
    status: str
