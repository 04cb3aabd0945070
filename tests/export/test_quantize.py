"""Calibration data: the manifest's train split (seeded) or a folder; the int8 graph is QDQ."""

import csv
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from sightwise.bundle import load_bundle
from sightwise.data.preprocess import Preprocessing, normalize
from sightwise.errors import DataError
from sightwise.export.manifest import bundle_samples, folder_samples, seeded_subset
from sightwise.export.quantize import NormalisedBatches, calibration_images


def _manifest(bundle):
    with open(bundle.file("manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_bundle_samples_resolve_against_data_root(trained_bundle):
    bundle = load_bundle(trained_bundle)
    rows = [r for r in _manifest(bundle) if r["split"] == "train"]
    samples = bundle_samples(bundle, "train")
    root = bundle.meta.raw["data"]["root"]
    assert [s.source for s in samples] == [f"{root}/{r['path']}" for r in rows]
    assert [bundle.classes[s.label] for s in samples] == [r["label"] for r in rows]
    assert all(s.split == "train" for s in samples)


def test_seeded_subset_is_reproducible_and_bounded(trained_bundle):
    samples = bundle_samples(load_bundle(trained_bundle), "train")
    a, b = seeded_subset(samples, 10, seed=3), seeded_subset(samples, 10, seed=3)
    assert a == b and len(a) == 10 and len(set(s.source for s in a)) == 10
    assert seeded_subset(samples, 10, seed=4) != a
    assert seeded_subset(samples, 10_000, seed=0) == samples


def test_default_calibration_uses_only_training_images(trained_bundle):
    bundle = load_bundle(trained_bundle)
    images, source = calibration_images(bundle, None, n=12, seed=0, log=lambda _m: None)
    size = bundle.preprocessing.size
    assert images.shape == (12, size, size, 3) and images.dtype == np.uint8
    assert "train split" in source


def test_calibration_folder_and_its_errors(trained_bundle, tmp_path):
    bundle = load_bundle(trained_bundle)
    folder = tmp_path / "calib" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20 + i, 30), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "bad.png").write_bytes(b"garbage")
    assert len(folder_samples(tmp_path / "calib")) == 4  # bad.png is found, then skipped
    logs = []
    images, source = calibration_images(bundle, tmp_path / "calib", log=logs.append)
    assert len(images) == 3 and source == str((tmp_path / "calib").resolve())
    assert any("bad.png" in m for m in logs)
    with pytest.raises(DataError, match="no images"):
        folder_samples(_empty(tmp_path))
    with pytest.raises(DataError, match="not found"):
        folder_samples(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_reader_feeds_equal_batches_normalised_then_rewinds():
    pre = Preprocessing(size=8)
    images = np.random.default_rng(0).integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    reader = NormalisedBatches(images, pre, batch_size=16)
    batches = list(iter(reader.get_next, None))
    # equal batches only (histogram calibrators stack them); the 5 left over are dropped
    assert [len(b["image"]) for b in batches] == [16, 16]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]),
                                  normalize(images[:32], pre))
    few = NormalisedBatches(images[:7], pre, batch_size=16)
    assert [len(b["image"]) for b in iter(few.get_next, None)] == [7]
    reader.rewind()
    assert reader.get_next() is not None


def test_int8_graph_is_qdq_with_per_channel_int8_weights(exported):
    g = onnx.load(str(load_bundle(exported[0]).file("model.int8.onnx")))
    ops = [n.op_type for n in g.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = {t.name: t for t in g.graph.initializer}
    per_channel = [n for n in g.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in weights and weights[n.input[0]].data_type == onnx.TensorProto.INT8
                   and len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1]
    assert per_channel  # conv weights carry one scale per output channel


def test_changed_images_are_left_out_of_parity(trained_bundle, tmp_path):
    from sightwise.export.manifest import unchanged

    bundle = load_bundle(trained_bundle)
    samples = bundle_samples(bundle, "test")[:3]
    copies = []
    for i, s in enumerate(samples):
        dst = tmp_path / f"{i}.png"
        shutil.copyfile(s.source, dst)
        copies.append(type(s)(str(dst), s.label, s.split, s.sha256))
    Image.new("RGB", (5, 5)).save(copies[1].source)  # edited since training
    logs = []
    kept = unchanged(copies, logs.append)
    assert [k.source for k in kept] == [copies[0].source, copies[2].source]
    assert "changed since training" in logs[0]


def _two_int8_graphs(exported, tmp_path, a: dict, b: dict):
    """The exported bundle's prepared fp32 graph quantised twice (options `a`, `b`) on the same
    40 calibration images; -> (preprocessing, test images, fp32, int8 a, int8 b)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sightwise.export.manifest import load_images
    from sightwise.export.quantize import quantize_int8

    bundle = load_bundle(exported[0])
    pre = bundle.preprocessing
    calib, _ = calibration_images(bundle, None, n=40, seed=0, log=lambda _m: None)
    held_out, _ = load_images(bundle_samples(bundle, "test"), pre, lambda _m: None, what="test")
    fp32 = tmp_path / "prepared.onnx"
    quant_pre_process(str(bundle.file("model.onnx")), str(fp32))
    path_a, path_b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_int8(fp32, path_a, calib, pre, **a)
    quantize_int8(fp32, path_b, calib, pre, **b)
    return pre, held_out, fp32, path_a, path_b


def test_bias_correction_removes_the_mean_shift_of_int8_convolutions(exported, tmp_path):
    """Against the float graph on images the correction never saw: the int8 graph's mean
    output per channel (last conv) moves towards the float one, and only biases change."""
    from sightwise.export.quantize import _channel_means

    pre, held_out, fp32, plain, corrected = _two_int8_graphs(
        exported, tmp_path, dict(bias_correction=False, gptq=False),
        dict(bias_correction=True, gptq=False))

    float_model = onnx.load(str(fp32))
    last = [n for n in float_model.graph.node if n.op_type == "Conv"][-1]
    (reference,) = _channel_means(float_model, [last.output[0]], held_out, pre)
    errors = {}
    for name, path in (("plain", plain), ("corrected", corrected)):
        model = onnx.load(str(path))
        out = next(n.output[0] for n in model.graph.node if n.name == last.name)
        (mean,) = _channel_means(model, [out], held_out, pre)
        errors[name] = float(np.abs(mean - reference).mean())
    assert errors["corrected"] < 0.5 * errors["plain"], errors

    a = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(plain)).graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(corrected)).graph.initializer}
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    assert changed and all(b[k].dtype == np.int32 for k in changed)  # int32 = quantised biases


def test_most_sensitive_small_convolutions_stay_float_within_the_weight_share(exported, tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sightwise.export.quantize import quantize_int8, sensitive_convs

    bundle = load_bundle(exported[0])
    pre = bundle.preprocessing
    calib, _ = calibration_images(bundle, None, n=20, seed=0, log=lambda _m: None)
    fp32 = tmp_path / "prepared.onnx"
    quant_pre_process(str(bundle.file("model.onnx")), str(fp32))
    model = onnx.load(str(fp32))
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = {n.name: int(np.prod(inits[n.input[1]].dims))
                    for n in model.graph.node if n.op_type == "Conv"}

    chosen = sensitive_convs(model, calib, pre, share=0.001)
    assert chosen and sum(conv_weights[c] for c in chosen) <= 0.001 * sum(conv_weights.values())
    assert sensitive_convs(model, calib, pre, share=0.0) == []

    kept = quantize_int8(fp32, tmp_path / "int8.onnx", calib, pre, bias_correction=False)
    assert kept == chosen
    q = onnx.load(str(tmp_path / "int8.onnx"))
    producer = {o: n.op_type for n in q.graph.node for o in n.output}
    float_convs = {n.name for n in q.graph.node if n.op_type == "Conv"
                   and producer.get(n.input[1]) != "DequantizeLinear"}
    assert float_convs == set(chosen)  # the rest read int8 weights through DequantizeLinear


def test_gptq_int8_graph_tracks_the_float_graph_more_closely(exported, tmp_path):
    """On test images neither step saw: GPTQ only changes int8 weight values (scales kept),
    and the int8 graph's logits move less from the float graph's than with plain rounding."""
    import onnxruntime as ort

    pre, test, fp32, plain, rounded = _two_int8_graphs(
        exported, tmp_path, dict(bias_correction=False, gptq=False),
        dict(bias_correction=False, gptq=True))

    def logits(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(["logits"], {"image": normalize(test, pre)})[0]

    ref = logits(fp32)
    errors = {k: float(np.abs(logits(p) - ref).mean()) for k, p in (("plain", plain), ("gptq", rounded))}
    assert errors["gptq"] < errors["plain"], errors

    a = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(plain)).graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(rounded)).graph.initializer}
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    assert changed and all(b[k].dtype == np.int8 for k in changed)
