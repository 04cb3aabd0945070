"""sightwise.runtime: run a bundle's ONNX graph with onnxruntime, numpy and Pillow only.

Usage::

    from sightwise.runtime import Predictor, overlay_cam
    p = Predictor("runs/demo/bundle", threads=2)
    p.predict_paths(["tile.png"], top_k=3)          # list[Prediction]
    cam, c, probs = p.cam(image); overlay_cam(image, cam).save("cam.png")

Never imports torch: the server, the search index and edge devices use it as is.
"""

from sightwise.runtime.cam import overlay_cam
from sightwise.runtime.predictor import Predictor

__all__ = ["Predictor", "overlay_cam"]
