"""The edge package: one folder that classifies images with onnxruntime, numpy and Pillow.

    DIR/model.onnx          the int8 graph when it exists and passed its gate, else fp32
    DIR/labels.json         class names, in output order
    DIR/preprocessing.json  size, resize mode, interpolation, mean, std, temperature, model
    DIR/predict.py          a copy of sightwise/export/edge_predict.py
    DIR/README.md           how to run it, and where it came from

Files are staged in a sibling temp folder and swapped in, so DIR is never half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sightwise.bundle import Bundle, sha256_path
from sightwise.errors import DataError

_README = """# {name}: image classifier ({n} classes)

Exported by Sightwise from bundle `{bundle}` ({precision} ONNX graph, opset {opset}).
Classes: {classes}.

Needs Python 3.10+ and three packages:

    pip install onnxruntime numpy pillow
    python predict.py photo1.jpg photo2.png --top-k 3
    python predict.py photo1.jpg --json

Probabilities are calibrated (temperature {temperature:.4g}). Each image is resized
"{resize}" to {size}x{size} ({interpolation}) and normalised with mean {mean} and std {std},
exactly as in training. Test-split parity with PyTorch: {parity}.

model.onnx sha256: {sha256}
"""


def write_edge_package(bundle: Bundle, out_dir: str | Path, *, model_name: str, parity: dict,
                       opset: int) -> Path:
    """Write the folder (replacing an older one) and return its path."""
    out = Path(out_dir)
    check_edge_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = bundle.preprocessing.to_dict()
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    stage.chmod(0o755)  # mkdtemp makes it private; the package is meant to be copied around
    try:
        shutil.copyfile(bundle.path / model_name, stage / "model.onnx")
        (stage / "labels.json").write_text(json.dumps(bundle.classes, indent=2), "utf-8")
        precision = "int8" if "int8" in model_name else "fp32"
        prep = {**pre, "temperature": bundle.temperature, "model": "model.onnx",
                "precision": precision}
        (stage / "preprocessing.json").write_text(json.dumps(prep, indent=2), "utf-8")
        shutil.copyfile(Path(__file__).with_name("edge_predict.py"), stage / "predict.py")
        readme = _README.format(
            name=bundle.path.resolve().parent.name or "model", n=len(bundle.classes),
            bundle=bundle.path.resolve(), precision=precision, opset=opset,
            classes=", ".join(bundle.classes), temperature=bundle.temperature,
            parity=_parity_line(parity, precision), sha256=sha256_path(stage / "model.onnx"),
            **pre)
        (stage / "README.md").write_text(readme, "utf-8")
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _parity_line(parity: dict, precision: str) -> str:
    m = parity.get(precision) or {}
    return (f"{m.get('agreement', float('nan')):.2%} top-1 agreement on n={parity.get('n')} "
            f"images, accuracy {m.get('accuracy', float('nan')):.2%}"
            f" (PyTorch {parity.get('torch', {}).get('accuracy', float('nan')):.2%})")


def check_edge_target(out: Path) -> None:
    """Replacing DIR wholesale is only safe when DIR is an earlier edge package (or empty)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (
            (out / "predict.py").is_file() and (out / "labels.json").is_file()))):
        raise DataError(f"{out} exists and is not an edge package; choose a new folder")


def _swap_in(stage: Path, out: Path) -> None:
    """Rename the staged folder into place; an older package is moved aside first."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{stage.name[-8:]}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
