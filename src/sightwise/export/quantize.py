"""Static int8 quantisation with onnxruntime: QDQ format, per-channel weights.

Calibration runs the float graph on a few hundred seeded training images of the bundle's own
manifest (or a folder the user names) to fix each activation's range (99.999th percentile). Weights are
symmetric int8 per output channel, activations asymmetric uint8: onnxruntime's recommended
CPU pairing ("U8S8"), see onnxruntime.ai/docs/performance/model-optimizations/quantization.

Weights are rounded with GPTQ (Frantar et al., ICLR 2023; see gptq.py) rather than to the
nearest int8 value: each rounding error is compensated by the weights not yet rounded, so a
layer's output on calibration data moves as little as it can (docs/experiments/ records
what it gained).

Rounding the weights of ~50 convolutions shifts each layer's mean output a little, and the
shifts add up through the network. Empirical bias correction (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2)
removes them: layer by layer, in graph order, the int8 graph's mean output per channel on
calibration images is compared with the float graph's and the difference is taken off that
layer's (int32) bias, so the shifts no longer add up (docs/experiments/ for the effect).

A network's first layers have the fewest weights and are the most sensitive to rounding
them: every later layer sees their error, and each of their few weights carries much of the
signal (docs/experiments/). Each convolution's sensitivity is measured (its weights alone
rounded, the float graph's outputs compared) and the most sensitive ones are kept in float
while they hold at most FLOAT_WEIGHT_SHARE of the weights: a few kilobytes of model size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm.auto import tqdm

from sightwise.bundle import Bundle
from sightwise.core import atomic_write_bytes, make_session
from sightwise.data.preprocess import Preprocessing, normalize
from sightwise.export.gptq import apply_gptq
from sightwise.export.manifest import (
    bundle_samples,
    folder_samples,
    load_images,
    seeded_subset,
)
from sightwise.export.onnx_export import INPUT_NAME, probe_session

# onnxruntime's percentile calibrator keeps every activation of every calibration image in
# memory until it computes the histograms: 300 images at 224 px took 17 GB, 100 take 7 GB.
DEFAULT_CALIB_SIZE = 100
# Images for the layer-by-layer bias correction: a mean per channel over images x pixels
# settles with a few dozen, and each of the ~50 layers costs a pass over them.
BIAS_CORRECTION_SIZE = 40
# Share of the convolution weights that may stay float (the most sensitive layers first):
# 0.1 % of Lite0's 3.4 M conv weights costs about 10 kB, keeping int8 >= 3.5x smaller.
FLOAT_WEIGHT_SHARE = 0.001
SENSITIVITY_SIZE = 20
GPTQ_SIZE = 64
QUANTIZATION_METHOD = {"float_layers": "most sensitive, <= 0.1 % of conv weights",
                       "calibration": "Percentile 99.999", "format": "QDQ", "per_channel": True,
                       "activations": "uint8", "weights": "int8 (GPTQ rounding, act order)",
                       "bias_correction": "empirical"}


class NormalisedBatches(CalibrationDataReader):
    """Feeds uint8 images to the calibrator as normalised float batches, made lazily so
    300 images at 224 px stay 45 MB of uint8 rather than 180 MB of float."""

    def __init__(self, images: np.ndarray, pre: Preprocessing, batch_size: int = 20,
                 bar=None):
        # Equal-sized batches only: onnxruntime's histogram calibrators stack the collected
        # activations and fail on a short last batch, so the remainder (< batch_size) is
        # left out unless it is all there is.
        usable = len(images) - len(images) % batch_size if len(images) > batch_size else len(images)
        self.images, self.pre, self.batch_size = images[:usable], pre, batch_size
        self.start, self.bar = 0, bar

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        if self.bar is not None:
            self.bar.update(len(chunk))
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


def _op_types_without_head(model: onnx.ModelProto) -> list[str]:
    """Every op type of the graph except the linear head's (Gemm/MatMul): the head is a few
    kilobytes, and kept in float it cannot turn small activation errors into flipped
    classes; the convolutions, where the megabytes are, are quantised."""
    return sorted({n.op_type for n in model.graph.node} - {"Gemm", "MatMul"})


def stage_bar(total: int, desc: str, progress: bool):
    """A progress bar (with rate and ETA) for one step of the int8 export."""
    return tqdm(total=total, desc=f"int8 {desc}", unit="step", leave=False, disable=not progress)


def quantize_int8(fp32_path: Path, out_path: Path, images: np.ndarray, pre: Preprocessing, *,
                  bias_correction: bool = True, float_share: float = FLOAT_WEIGHT_SHARE,
                  gptq: bool = True, progress: bool = True) -> list[str]:
    """Write the QDQ int8 model for `fp32_path` to `out_path` (atomically); returns the
    convolutions kept in float. Each step shows a progress bar: the whole takes minutes on
    a laptop CPU (calibration holds every activation of the images: ~7 GB for 100)."""
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference + graph optimisation first, as onnxruntime's quantisation guide
        # asks: fused Conv+BN and known shapes give better-placed Q/DQ pairs.
        quant_pre_process(str(fp32_path), str(prepared))
        float_model = onnx.load(str(prepared))  # read-only below: each step copies what it edits
        keep_float = sensitive_convs(float_model, images[:SENSITIVITY_SIZE], pre,
                                     float_share, progress=progress) if float_share > 0 else []
        calib_bar = stage_bar(len(images), "calibration (images)", progress)
        quantize_static(
            str(prepared), str(quantized), NormalisedBatches(images, pre, bar=calib_bar),
            op_types_to_quantize=_op_types_without_head(float_model),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # Percentile (99.999 %) ignores the rare extreme activations that stretch a
            # MinMax range and leave too few int8 steps for the common values (compared
            # with MinMax, its moving average, S8S8 and U8U8 in docs/experiments/).
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=keep_float,
        )
        calib_bar.close()
        model = onnx.load(str(quantized))
        if gptq:
            apply_gptq(float_model, model, images[:GPTQ_SIZE], pre, progress=progress)
        if bias_correction:
            correct_biases(float_model, model, images[:BIAS_CORRECTION_SIZE], pre,
                           progress=progress)
        atomic_write_bytes(out_path, model.SerializeToString())
    return keep_float


def _round_weights(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel, as quantize_static does it, back in float."""
    scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)


def sensitive_convs(float_model: onnx.ModelProto, images: np.ndarray, pre: Preprocessing,
                    share: float = FLOAT_WEIGHT_SHARE, progress: bool = False) -> list[str]:
    """Names of the convolutions to keep in float: ranked by how far rounding only their
    weights moves the graph's outputs (relative mean absolute error, summed over outputs),
    taken in that order whenever they still fit in `share` of all conv weights."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    initializers = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers]
    outputs = [o.name for o in model.graph.output]
    x = normalize(images, pre)

    def run() -> list[np.ndarray]:
        session = make_session(model.SerializeToString())
        return session.run(outputs, {INPUT_NAME: x})

    reference = run()
    scores, sizes = {}, {}
    for conv in tqdm(convs, desc="int8 sensitivity (layers)", leave=False, disable=not progress):
        tensor = initializers[conv.input[1]]
        w = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(_round_weights(w), tensor.name))
        scores[conv.name] = sum(float(np.abs(o - r).mean() / (np.abs(r).mean() + 1e-12))
                                for o, r in zip(run(), reference, strict=True))
        tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
        sizes[conv.name] = w.size
    allowance, chosen = share * sum(sizes.values()), []
    for name in sorted(scores, key=scores.get, reverse=True):
        if sizes[name] <= allowance:
            chosen.append(name)
            allowance -= sizes[name]
    return chosen


def _channel_means(model: onnx.ModelProto, tensors: list[str], images: np.ndarray,
                   pre: Preprocessing, batch_size: int = 20) -> list[np.ndarray]:
    """Mean over images and pixels of each (N, C, H, W) tensor, per channel."""
    session = probe_session(model, tensors)
    sums = [0.0] * len(tensors)
    for i in range(0, len(images), batch_size):
        outs = session.run(tensors, {INPUT_NAME: normalize(images[i:i + batch_size], pre)})
        sums = [s + o.sum(axis=(0, 2, 3), dtype=np.float64) for s, o in zip(sums, outs, strict=True)]
    pixels = [len(images) * o.shape[2] * o.shape[3] for o in outs]
    return [s / p for s, p in zip(sums, pixels, strict=True)]


def correct_biases(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, images: np.ndarray,
                   pre: Preprocessing, progress: bool = False) -> int:
    """Empirical bias correction of `qdq_model`'s convolutions, in place; returns how many.

    Conv nodes keep their names through quantisation, so each int8 conv is matched with its
    float twin; its output is compared before the following Q/DQ pair (which is also where a
    removed ReLU6 would have clipped). Corrections go in sequentially, so each layer sees the
    already-corrected layers before it.
    """
    float_out = {n.name: n.output[0] for n in float_model.graph.node if n.op_type == "Conv"}
    convs = [n for n in qdq_model.graph.node if n.op_type == "Conv" and n.name in float_out
             and len(n.input) > 2]
    if not convs:
        return 0
    targets = _channel_means(float_model, [float_out[n.name] for n in convs], images, pre)
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    initializers = {t.name: t for t in qdq_model.graph.initializer}
    corrected = 0
    bar = tqdm(zip(convs, targets, strict=True), total=len(convs), leave=False,
               desc="int8 bias correction (layers)", disable=not progress)
    for conv, target in bar:
        dq = producer.get(conv.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue  # a float bias (layer left unquantised) needs no correction
        (mean,) = _channel_means(qdq_model, [conv.output[0]], images, pre)
        bias = initializers[dq.input[0]]
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        step = np.round((mean - target) / scale).astype(np.int64)
        new = numpy_helper.to_array(bias).astype(np.int64) - step
        info = np.iinfo(np.int32)
        bias.CopyFrom(numpy_helper.from_array(np.clip(new, info.min, info.max).astype(np.int32),
                                              bias.name))
        corrected += 1
    return corrected
