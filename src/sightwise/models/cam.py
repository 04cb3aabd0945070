"""Class activation maps in PyTorch (for the training report and as the Grad-CAM check).

For a global-average-pool + linear head, the class activation map (Zhou et al., CVPR 2016)
is exact and needs no gradients: the logit of class c is the spatial mean of
sum_k W[c, k] * A_k, so that weighted sum *is* where the evidence for c lies. Grad-CAM
(Selvaraju et al., ICCV 2017) weights A_k by the spatially averaged gradient of the logit,
which for this head is W[c, k] / (h * w): the same map up to a positive scale. The runtime
computes the same map from the ONNX graph's `features` output, without torch.
"""

from __future__ import annotations

import torch

from sightwise.models.classifier import Classifier


def class_activation_map(model: Classifier, x: torch.Tensor, class_index: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N,3,S,S) -> (cams (N,h,w) in [0,1], class indices (N,)); predicted class by default."""
    with torch.inference_mode():
        logits, _, feats = model.forward_all(x)
        idx = logits.argmax(1) if class_index is None else class_index
        weights = model.head.weight[idx]  # (N, C_feat)
        cam = torch.einsum("nk,nkhw->nhw", weights, feats.float())
    return normalise_maps(torch.relu(cam)), idx


def grad_cam(model: Classifier, x: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """Grad-CAM with autograd on the last feature map (the reference CAM is checked against)."""
    model.eval()
    feats = model.forward_features(x).detach().requires_grad_(True)
    logits = model.forward_head(feats)
    score = logits.gather(1, class_index.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, feats)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * feats).sum(1)).detach()
    return normalise_maps(cam)


def normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] (an all-zero map stays zero)."""
    flat = cam.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return (cam - lo) / (hi - lo).clamp_min(1e-12)
