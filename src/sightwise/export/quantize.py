"""Static int8 quantisation with onnxruntime: QDQ format, per-channel weights.

Calibration runs the float graph on a few hundred seeded training images of the bundle's own
manifest (or a folder the user names) to fix each activation's range (MinMax). Weights are
symmetric int8 per output channel, activations asymmetric uint8: onnxruntime's recommended
CPU pairing ("U8S8"), see onnxruntime.ai/docs/performance/model-optimizations/quantization.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from sightwise.bundle import Bundle, atomic_write_bytes
from sightwise.data.preprocess import Preprocessing, normalize
from sightwise.export.manifest import (
    bundle_samples,
    folder_samples,
    load_images,
    seeded_subset,
)
from sightwise.export.onnx_export import INPUT_NAME

# onnxruntime's percentile calibrator keeps every activation of every calibration image in
# memory until it computes the histograms: 300 images at 224 px took 17 GB, 100 take 7 GB.
DEFAULT_CALIB_SIZE = 100


class NormalisedBatches(CalibrationDataReader):
    """Feeds uint8 images to the calibrator as normalised float batches, made lazily so
    300 images at 224 px stay 45 MB of uint8 rather than 180 MB of float."""

    def __init__(self, images: np.ndarray, pre: Preprocessing, batch_size: int = 20):
        # Equal-sized batches only: onnxruntime's histogram calibrators stack the collected
        # activations and fail on a short last batch, so the remainder (< batch_size) is
        # left out unless it is all there is.
        usable = len(images) - len(images) % batch_size if len(images) > batch_size else len(images)
        self.images, self.pre, self.batch_size = images[:usable], pre, batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        return {INPUT_NAME: normalize(chunk, self.pre)}

    def rewind(self) -> None:
        self.start = 0


def calibration_images(
    bundle: Bundle, calib: str | Path | None, *, n: int = DEFAULT_CALIB_SIZE, seed: int = 0,
    log=print,
) -> tuple[np.ndarray, str]:
    """Seeded uint8 calibration images and a description of where they came from."""
    if calib is None:
        samples = bundle_samples(bundle, "train")
        source = "train split of manifest.csv"
    else:
        samples = folder_samples(calib)
        source = str(Path(calib).resolve())
    chosen = seeded_subset(samples, n, seed)
    images, _ = load_images(chosen, bundle.preprocessing, log, what="calibration")
    return images, source


def _op_types_without_head(model_path: Path) -> list[str]:
    """Every op type of the graph except the linear head's (Gemm/MatMul): the head is a few
    kilobytes, and kept in float it cannot turn small activation errors into flipped
    classes; the convolutions, where the megabytes are, are quantised."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sorted({n.op_type for n in graph.node} - {"Gemm", "MatMul"})


def quantize_int8(fp32_path: Path, out_path: Path, images: np.ndarray, pre: Preprocessing) -> None:
    """Write the QDQ int8 model for `fp32_path` to `out_path` (atomically)."""
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference + graph optimisation first, as onnxruntime's quantisation guide
        # asks: fused Conv+BN and known shapes give better-placed Q/DQ pairs.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(quantized), NormalisedBatches(images, pre),
            op_types_to_quantize=_op_types_without_head(prepared),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # Percentile (99.999 %) ignores the rare extreme activations that stretch a
            # MinMax range: on NEU it halved the top-1 flips (2 -> 1 of 270); MinMax, its
            # moving average, S8S8 and U8U8 all left 2.
            calibrate_method=CalibrationMethod.Percentile,
        )
        atomic_write_bytes(out_path, quantized.read_bytes())
