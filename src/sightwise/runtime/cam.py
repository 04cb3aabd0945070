"""Class activation maps from the graph's feature map, and a colour overlay; numpy + Pillow.

For a global-average-pool + linear head, logit_c = b_c + mean_hw sum_k W[c,k] F[k,h,w], so
the map sum_k W[c,k] F[k] is exactly what the logit averages (Zhou et al., CVPR 2016).
Grad-CAM (Selvaraju et al., ICCV 2017) on such a head weights F[k] by W[c,k] / (h*w) and
keeps the positive part; after the ReLU and max-normalisation used here the two coincide,
which the tests check against a PyTorch Grad-CAM.
"""

from __future__ import annotations

import numpy as np

from sightwise.heatmap import JET, colorize, overlay_cam  # noqa: F401  (re-exported)


def class_activation_map(features: np.ndarray, weight: np.ndarray, class_index: int) -> np.ndarray:
    """features (K,h,w), weight (C,K) -> map (h,w) float32 in [0,1] (all zero if nothing
    speaks for the class).

    >>> f = np.zeros((2, 2, 2), np.float32); f[0, 0, 0] = 4.0; f[1, 1, 1] = 1.0
    >>> class_activation_map(f, np.array([[1.0, 2.0]]), 0).tolist()
    [[1.0, 0.0], [0.0, 0.5]]
    """
    cam = np.tensordot(weight[class_index].astype(np.float32), features.astype(np.float32),
                       axes=(0, 0))
    cam = np.maximum(cam, 0.0)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)
