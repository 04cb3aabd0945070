"""PyTorch classifier -> one ONNX graph with three outputs (DESIGN.md principle 2).

The graph takes `image` (N, 3, S, S) float32, normalised as the bundle says, with a dynamic
batch and a fixed spatial size, and answers `logits`, `embedding` (the pooled pre-logits
vector) and `features` (the last feature map, for CAM). The head's weight and bias are also
saved as `head.npz`, so the torch-free runtime can weight the feature map for CAM without
parsing (or de-quantising) the graph.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from sightwise.core import atomic_write_bytes, make_session
from sightwise.models.classifier import Classifier

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "embedding", "features")


class AllOutputs(nn.Module):
    """Exports `forward_all`: one pass, three named outputs."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_all(x)


def export_onnx(model: Classifier, size: int, path: Path, *, opset: int = 17) -> None:
    """Trace `model` at batch 1 into `path` (atomically), batch axis dynamic."""
    wrapper = AllOutputs(model)
    # A fresh nn.Module is in training mode, and torch.onnx.export restores the wrapper's
    # mode afterwards; that would switch the classifier's BatchNorm to training for every
    # later forward pass. Export from, and return to, eval mode.
    wrapper.eval()
    dummy = torch.zeros(1, 3, size, size)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            # The tracer warns about Python ints taken from tensor sizes (timm's "same"
            # padding); fold_static_shapes below turns exactly those into constants.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (dummy,), str(raw), input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        graph = fold_static_shapes(onnx.load(str(raw)), size)
    onnx.checker.check_model(graph)
    atomic_write_bytes(Path(path), graph.SerializeToString())


def fold_static_shapes(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """Replace shape arithmetic that does not depend on the batch size by constants.

    timm's TF-style "same" padding (tf_efficientnet_lite0's Conv2dSame) is traced as
    Shape -> Cast -> Div -> Ceil -> ... -> Pad. The spatial size is fixed by the bundle,
    so those pads are constants; left as float arithmetic, onnxruntime's static quantiser
    quantises the Div/Mul/Clip nodes of that arithmetic and the pads come out wrong (a 4x4
    feature map becomes 3x3). Each candidate is evaluated at two batch sizes and folded only
    when both agree, so nothing that follows the batch axis is frozen.
    """
    graph = model.graph
    derived = _shape_derived(graph)
    consumers = {i for n in graph.node if not _is_derived(n, derived) for i in n.input}
    frontier = sorted(t for t in derived if t in consumers or t in {o.name for o in graph.output})
    if not frontier:
        return model
    values = [_evaluate(model, frontier, size, batch) for batch in (1, 3)]
    folded = [t for t in frontier if np.array_equal(values[0][t], values[1][t])]
    for name in folded:
        graph.initializer.append(numpy_helper.from_array(values[0][name], name))
    _drop_dead_nodes(graph, set(folded))
    return model


def _is_derived(node: onnx.NodeProto, derived: set[str]) -> bool:
    return bool(node.output) and all(o in derived for o in node.output)


def _shape_derived(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed only from Shape nodes and constants (the graph is topological)."""
    const = {i.name for i in graph.initializer}
    derived: set[str] = set()
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            const.update(node.output)
        elif node.op_type == "Shape" or (
            any(i in derived for i in inputs) and all(i in derived or i in const for i in inputs)
        ):
            derived.update(node.output)
    return derived


def probe_session(model: onnx.ModelProto, names: list[str], *,
                  optimize: bool = True) -> ort.InferenceSession:
    """A CPU session of a copy of `model` whose outputs are the named intermediate tensors
    (their shapes undeclared, which onnxruntime accepts; its warning about it is silenced)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = make_session(probe.SerializeToString(), optimize=optimize, quiet=True)
    return session


def _evaluate(model: onnx.ModelProto, names: list[str], size: int, batch: int) -> dict:
    sess = probe_session(model, names, optimize=False)
    x = np.zeros((batch, 3, size, size), np.float32)
    return dict(zip(names, sess.run(names, {INPUT_NAME: x}), strict=True))


def _drop_dead_nodes(graph: onnx.GraphProto, folded: set[str]) -> None:
    """Remove nodes whose outputs nobody reads any more (walking back from the outputs)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed and o not in folded for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def save_head(model: Classifier, path: Path) -> None:
    """The linear head as plain float32 arrays (np.savez: no pickle; read with
    allow_pickle=False) so CAM needs neither torch nor the graph's internals."""
    buf = io.BytesIO()
    np.savez(
        buf,
        weight=model.head.weight.detach().cpu().numpy().astype(np.float32),
        bias=model.head.bias.detach().cpu().numpy().astype(np.float32),
    )
    atomic_write_bytes(Path(path), buf.getvalue())


def run_logits(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits for a normalised float32 NCHW array, in batches."""
    out = [session.run(["logits"], {INPUT_NAME: x[i:i + batch_size]})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
