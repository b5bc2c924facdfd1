"""Inference: load a model from any checkpoint, predict on any image, write every output format.

    from maskrcnn.inference import load_model
    model = load_model("model.safetensors")          # or a torchvision .pth, or "torchvision:..."
    results = model.predict(["a.jpg", "b.png"])        # one Result per image
    results[0].save("out/")                          # overlay, COCO JSON, label map

Command line: `maskrcnn predict` (predict.py) and `maskrcnn inspect` (inspect.py).
"""
from ..io import ImageLoadError, expand_sources, load_image
from .api import DEFAULT_BATCH_SIZE, Predictor, Result, load_model

__all__ = ["DEFAULT_BATCH_SIZE", "ImageLoadError", "Predictor", "Result", "expand_sources", "load_image", "load_model"]
