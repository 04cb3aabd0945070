"""The registry imports without torch (the server uses it) and does no work at import."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, importlib.abc, pkgutil, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision", "timm")):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
import sightwise.registry as pkg
for m in pkgutil.walk_packages(pkg.__path__, "sightwise.registry."):
    importlib.import_module(m.name)
assert "torch" not in sys.modules
assert "mlflow" not in sys.modules, "MLflow is imported lazily, on first use"
print("ok")
"""


def test_registry_imports_without_torch_or_mlflow():
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
