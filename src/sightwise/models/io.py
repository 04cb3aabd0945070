"""Save and load classifier weights as safetensors (never pickle) with the bundle's meta."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sightwise.bundle import Bundle
from sightwise.models.classifier import Classifier, EnsembleBackbone, build_classifier


def save_weights(model: Classifier, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_classifier(bundle: Bundle) -> Classifier:
    """Rebuild the network named in bundle.json and load its verified safetensors."""
    arch = bundle.meta.model
    model = build_classifier(arch["name"], int(arch["num_classes"]), pretrained=False,
                             members=int(arch.get("members", 1)), hflip=bool(arch.get("hflip", False)))
    state = load_file(str(bundle.file("weights.safetensors")))
    model.load_state_dict(state)
    return model.eval().to(memory_format=torch.channels_last)


def ensemble_meta(model: Classifier) -> dict:
    """bundle.json's record of an ensemble's shape (`load_classifier` rebuilds it); {} for one."""
    body = model.backbone
    if not isinstance(body, EnsembleBackbone):
        return {}
    return {"members": len(body.members), "hflip": body.hflip}
