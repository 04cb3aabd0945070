"""The exported graph against PyTorch: names, dynamic batch, all three outputs, the head."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sightwise.bundle import load_bundle
from sightwise.core import make_session
from sightwise.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAMES,
    export_onnx,
    fold_static_shapes,
)
from sightwise.models.classifier import Classifier
from sightwise.models.io import load_classifier


def _batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_graph_io_names_and_dynamic_batch_only(exported):
    bundle = load_bundle(exported[0])
    g = onnx.load(str(bundle.file("model.onnx")))
    assert [i.name for i in g.graph.input] == [INPUT_NAME]
    assert [o.name for o in g.graph.output] == list(OUTPUT_NAMES)
    dims = g.graph.input[0].type.tensor_type.shape.dim
    size = bundle.preprocessing.size
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, size, size]
    assert bundle.meta.raw["export"]["opset"] == 17
    assert any(o.version == 17 for o in g.opset_import if o.domain in ("", "ai.onnx"))


def test_onnx_matches_pytorch_on_all_three_outputs(exported):
    bundle = load_bundle(exported[0])
    model = load_classifier(bundle)
    x = _batch(8, bundle.preprocessing.size)
    out = make_session(bundle.file("model.onnx")).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    with torch.inference_mode():
        ref = [t.numpy() for t in model.forward_all(torch.from_numpy(x))]
    for got, want in zip(out, ref, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_exported_at_batch_1_runs_identically_at_batch_32(exported):
    bundle = load_bundle(exported[0])
    sess = make_session(bundle.file("model.onnx"))
    x = _batch(32, bundle.preprocessing.size, seed=1)
    whole = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    single = [sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i:i + 1]}) for i in range(32)]
    for k, name in enumerate(OUTPUT_NAMES):
        np.testing.assert_allclose(whole[k], np.concatenate([s[k] for s in single]),
                                   rtol=1e-5, atol=1e-5, err_msg=name)


def test_same_padding_shape_math_is_folded_away(exported):
    g = onnx.load(str(load_bundle(exported[0]).file("model.onnx")))
    ops = {n.op_type for n in g.graph.node}
    assert "Pad" in ops  # Lite0's TF-style "same" padding is there ...
    assert not ops & {"Shape", "Ceil", "Cast"}  # ... with constant pads


def test_int8_graph_keeps_the_feature_map_shape(exported):
    """Regression: quantising the unfolded pad arithmetic shrank 4x4 feature maps to 3x3."""
    bundle = load_bundle(exported[0])
    x = _batch(2, bundle.preprocessing.size)
    f32 = make_session(bundle.file("model.onnx")).run(None, {INPUT_NAME: x})
    i8 = make_session(bundle.file("model.int8.onnx")).run(None, {INPUT_NAME: x})
    assert [a.shape for a in f32] == [b.shape for b in i8]


def test_head_npz_reproduces_the_logits(exported):
    bundle = load_bundle(exported[0])
    with np.load(bundle.file("head.npz"), allow_pickle=False) as z:
        w, b = z["weight"], z["bias"]
    assert w.dtype == np.float32 and w.shape == (len(bundle.classes), bundle.meta.num_features)
    logits, emb = make_session(bundle.file("model.onnx")).run(
        ["logits", "embedding"], {INPUT_NAME: _batch(4, bundle.preprocessing.size)})
    np.testing.assert_allclose(emb @ w.T + b, logits, rtol=1e-4, atol=1e-4)


def test_export_leaves_the_model_in_eval_mode(tmp_path):
    """torch.onnx.export restores the wrapper's mode; a fresh wrapper is in training mode,
    which would switch BatchNorm to batch statistics afterwards."""
    from sightwise.models.registry import create_backbone

    model = Classifier(create_backbone("small_resnet", pretrained=False), 3).eval()
    x = torch.from_numpy(_batch(2, 32))
    with torch.inference_mode():
        before = model(x)
    export_onnx(model, 32, tmp_path / "m.onnx")
    assert not any(m.training for m in model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before)


class _FlattenHead(nn.Module):
    """Uses the batch size in its shape arithmetic: that must stay dynamic."""

    def forward(self, x):
        pad = (x.shape[-1] + 1) // 2
        y = nn.functional.pad(x, (pad, pad))
        return y.reshape(x.shape[0], -1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, on purpose
def test_fold_keeps_batch_dependent_shapes_dynamic(tmp_path):
    path = tmp_path / "flat.onnx"
    torch.onnx.export(_FlattenHead().eval(), (torch.zeros(1, 3, 4, 4),), str(path),
                      input_names=[INPUT_NAME], output_names=["out"], dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, "out": {0: "batch"}})
    folded = fold_static_shapes(onnx.load(str(path)), 4)
    onnx.save(folded, str(tmp_path / "folded.onnx"))
    x = _batch(5, 4)
    (out,) = make_session(tmp_path / "folded.onnx").run(None, {INPUT_NAME: x})
    ref = _FlattenHead()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out, ref)
    assert "Shape" in {n.op_type for n in folded.graph.node}  # the batch size is still read
