"""Error-compensating rounding of int8 convolution weights (GPTQ, Frantar et al., ICLR 2023).

Rounding each weight to its nearest int8 value is optimal per weight but not per layer: the
errors of one output channel add up over its inputs. GPTQ rounds the inputs of a layer one
at a time and spreads each rounding error over the not-yet-rounded weights of the same
output channel, weighted by the inverse of the layer's input Hessian H = E[x x^T] (the
Optimal Brain Surgeon update), so the channel's output on the calibration data moves as
little as it can. Scales and zero points stay those onnxruntime chose; only the int8
values change, written into the QDQ graph's weight initialisers.

A convolution is a matrix product on unfolded input patches (im2col), so H is taken over
patches: per group, (C_in/groups * kh * kw) square — 9 x 9 per channel for a depthwise conv,
C_in x C_in for a pointwise one. Inputs come from the float graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper
from tqdm.auto import tqdm

from sightwise.data.preprocess import Preprocessing, normalize
from sightwise.export.onnx_export import INPUT_NAME, probe_session

DAMPING = 0.01  # of the mean diagonal of H, as in the GPTQ paper


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return default


def unfold(x: np.ndarray, conv: onnx.NodeProto, kernel: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) conv input -> (groups, N*Ho*Wo, C/groups*kh*kw) patches, laid out as
    the conv's weight (c, i, j), honouring the node's pads, strides and dilations."""
    kh, kw = kernel
    groups = int(_attr(conv, "group", 1))
    top, left, bottom, right = _attr(conv, "pads", [0, 0, 0, 0])
    sh, sw = _attr(conv, "strides", [1, 1])
    dh, dw = _attr(conv, "dilations", [1, 1])
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = win.shape[:4]
    win = win.reshape(n, groups, c // groups, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(groups, n * ho * wo, (c // groups) * kh * kw)


def gptq_round(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, *, qmax: int = 127,
               damping: float = DAMPING) -> np.ndarray:
    """Integer weights for `w` (G, O, d) given per-group Hessians (G, d, d) and per-row
    scales (G, O); returns int8 values (G, O, d).

    With H = I this is plain round-to-nearest; otherwise each column's rounding error is
    carried onto the later columns through the upper Cholesky factor of H^-1.
    """
    w = np.array(w, np.float64)
    h = np.array(hessian, np.float64)
    g, _, d = w.shape
    diag = np.einsum("gii->gi", h)
    # "act order": round the inputs with the largest activations first, while the most
    # columns are still left to absorb their errors.
    order = np.argsort(-diag, axis=1, kind="stable")
    w = np.take_along_axis(w, order[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], axis=1), order[:, None, :], axis=2)
    diag = np.take_along_axis(diag, order, axis=1)
    dead = diag <= 0  # inputs that were always zero: any rounding is exact on the data
    h[:, np.arange(d), np.arange(d)] += np.where(dead, 1.0, 0.0)
    h += damping * np.maximum(diag.mean(axis=1), 1e-12)[:, None, None] * np.eye(d)
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # upper: H^-1 = U^T U
    s = np.asarray(scale, np.float64)
    q = np.empty(w.shape, np.int8)
    for i in range(d):
        qi = np.clip(np.round(w[:, :, i] / s), -qmax, qmax)
        q[:, :, i] = qi
        err = (w[:, :, i] - qi * s) / u[:, i, i][:, None]
        w[:, :, i + 1:] -= err[:, :, None] * u[:, None, i, i + 1:]
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order[:, None, :], q.shape), q, axis=2)
    return out


def conv_hessians(float_model: onnx.ModelProto, convs: list[onnx.NodeProto],
                  kernels: list[tuple[int, int]], images: np.ndarray, pre: Preprocessing,
                  batch_size: int = 8, progress: bool = False) -> list[np.ndarray]:
    """Per-group input Hessians E[x x^T] of each conv over the calibration images."""
    names = sorted({c.input[0] for c in convs} - {INPUT_NAME})
    session = probe_session(float_model, names)
    sums: list[np.ndarray | None] = [None] * len(convs)
    rows = [0] * len(convs)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="int8 GPTQ statistics (batches)", leave=False,
                      disable=not progress):
        x = normalize(images[start:start + batch_size], pre)
        acts = dict(zip(names, session.run(names, {INPUT_NAME: x}), strict=True))
        acts[INPUT_NAME] = x
        for k, (conv, kernel) in enumerate(zip(convs, kernels, strict=True)):
            p = unfold(acts[conv.input[0]], conv, kernel).astype(np.float32)
            part = np.matmul(p.transpose(0, 2, 1), p).astype(np.float64)
            sums[k] = part if sums[k] is None else sums[k] + part
            rows[k] += p.shape[1]
    return [s / max(r, 1) for s, r in zip(sums, rows, strict=True)]


def apply_gptq(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, images: np.ndarray,
               pre: Preprocessing, progress: bool = False) -> int:
    """Re-round the int8 conv weights of `qdq_model` in place with GPTQ; returns how many
    convs were re-rounded. Convs keep their names through quantisation, which pairs each
    int8 conv with its float twin (weights and input tensor)."""
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_convs = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    inits = {t.name: t for t in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    jobs = []
    for conv in qdq_model.graph.node:
        if conv.op_type != "Conv":
            continue
        twin, dq = float_convs.get(conv.name), producer.get(conv.input[1])
        if twin is None or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] not in inits or twin.input[1] not in float_inits:
            continue
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 else None
        if zero is not None and np.any(numpy_helper.to_array(zero)):
            continue  # asymmetric weights: not the grid gptq_round rounds to
        jobs.append((twin, dq))
    if not jobs:
        return 0
    weights = [numpy_helper.to_array(float_inits[t.input[1]]) for t, _ in jobs]
    hessians = conv_hessians(float_model, [t for t, _ in jobs],
                             [tuple(w.shape[2:]) for w in weights], images, pre,
                             progress=progress)
    bar = tqdm(zip(jobs, weights, hessians, strict=True), total=len(jobs), leave=False,
               desc="int8 GPTQ rounding (layers)", disable=not progress)
    for (twin, dq), w, h in bar:
        groups = int(_attr(twin, "group", 1))
        o = w.shape[0]
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
        scale = np.broadcast_to(scale, (o,)).reshape(groups, o // groups)
        q = gptq_round(w.reshape(groups, o // groups, -1), h, scale)
        target = inits[dq.input[0]]
        target.CopyFrom(numpy_helper.from_array(q.reshape(w.shape), target.name))
    return len(jobs)
