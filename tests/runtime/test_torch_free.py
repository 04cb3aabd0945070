"""sightwise.runtime imports and predicts in a process where `import torch` fails."""

import json
import subprocess
import sys
import textwrap

from sightwise.bundle import load_bundle
from sightwise.export.manifest import bundle_samples

BLOCKED = ("torch", "torchvision", "timm", "safetensors", "sklearn", "scipy", "matplotlib")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    BLOCKED = set(sys.argv[3].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    sys.modules["torch"] = None  # `import torch` raises ImportError from here on
    try:
        import torch  # noqa: F401
        sys.exit("torch was importable")
    except ImportError:
        pass

    from PIL import Image
    from sightwise.runtime import Predictor, overlay_cam

    p = Predictor(sys.argv[1], int8=True, threads=1)
    paths = json.loads(sys.argv[2])
    preds = p.predict_paths(paths + ["/nonexistent.png"])
    heat, c, probs = p.cam(Image.open(paths[0]))
    overlay_cam(Image.open(paths[0]), heat)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m])
    print(json.dumps({"labels": [x.label for x in preds], "errors": [x.error for x in preds],
                      "cam": list(heat.shape), "loaded": loaded, "embed": p.embed([]).shape[0]}))
""")


def test_runtime_predicts_without_torch(exported):
    bundle = load_bundle(exported[0])
    samples = bundle_samples(bundle, "test")[:4]
    paths = [s.source for s in samples]
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(exported[0]), json.dumps(paths),
                          ",".join(BLOCKED)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["labels"][:4] == [bundle.classes[s.label] for s in samples]
    assert out["errors"] == [None] * 4 + ["file not found"]
    assert len(out["cam"]) == 2 and out["embed"] == 0
