"""GPTQ rounding: im2col against onnxruntime's Conv, the rounding against round-to-nearest
(the whole int8 graph against the float graph is in test_quantize.py)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sightwise.export.gptq import gptq_round, unfold


def _conv_model(w: np.ndarray, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs", [
    {"group": 1, "pads": [0, 0, 1, 1], "strides": [2, 2]},  # the stem: TF "same", stride 2
    {"group": 6, "pads": [1, 1, 1, 1], "strides": [1, 1]},  # depthwise
    {"group": 2, "pads": [0, 1, 2, 0], "strides": [1, 2], "dilations": [2, 1]},
])
def test_unfolded_patches_times_weights_is_the_onnx_convolution(attrs):
    rng = np.random.default_rng(0)
    c, groups = 6, attrs["group"]
    w = rng.standard_normal((12, c // groups, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, c, 9, 11)).astype(np.float32)
    model = _conv_model(w, kernel_shape=[3, 3], **attrs)
    (ref,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    patches = unfold(x, model.graph.node[0], (3, 3))  # (groups, N*Ho*Wo, d)
    wg = w.reshape(groups, 12 // groups, -1)
    out = np.matmul(patches, wg.transpose(0, 2, 1))  # (groups, N*Ho*Wo, O/groups)
    n, o, ho, wo = ref.shape
    out = out.reshape(groups, n, ho, wo, o // groups).transpose(1, 0, 4, 2, 3).reshape(ref.shape)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_identity_hessian_gives_round_to_nearest():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5, 9))
    scale = np.abs(w).max(axis=2) / 127
    q = gptq_round(w, np.broadcast_to(np.eye(9), (3, 9, 9)), scale, damping=0.0)
    np.testing.assert_array_equal(q, np.clip(np.round(w / scale[..., None]), -127, 127))


def test_correlated_inputs_get_a_smaller_output_error_than_round_to_nearest():
    """The point of GPTQ: with correlated inputs, one weight's rounding error is cancelled by
    its neighbours', so the layer's output on the data moves less than with RTN."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4000, 4))
    x = base @ rng.standard_normal((4, 32)) + 0.05 * rng.standard_normal((4000, 32))
    w = rng.standard_normal((1, 16, 32))
    scale = np.abs(w).max(axis=2) / 7  # a coarse grid (4-bit-like) so rounding matters
    h = (x.T @ x / len(x))[None]

    def output_error(q):
        return float(np.mean((x @ (w[0] - q[0] * scale[0][:, None]).T) ** 2))

    rtn = np.clip(np.round(w / scale[..., None]), -127, 127)
    gptq = gptq_round(w, h, scale).astype(np.float64)
    assert output_error(gptq) < 0.5 * output_error(rtn)
    assert np.abs(gptq - w / scale[..., None]).max() <= 127  # still on the int8 grid
