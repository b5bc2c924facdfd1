"""ONNX: `export_onnx(model, "model.onnx")` writes the whole inference as one graph;
`OnnxModel("model.onnx")` runs it in ONNX Runtime behind the model interface the predictor
uses (`maskrcnn.load_model("model.onnx")` does both for you); `paste_masks` pastes the graph's
28x28 mask probabilities into an image.

Needs the optional extra: pip install -e ".[onnx]" (onnx, onnxruntime, onnxscript).
"""
from __future__ import annotations

__all__ = ["OnnxModel", "export_onnx", "paste_masks"]


def __getattr__(name: str):
    # Lazy: importing maskrcnn.export must not need onnx until something is exported or run.
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    if name == "OnnxModel":
        from .runtime import OnnxModel

        return OnnxModel
    if name == "paste_masks":
        from ..ops.masks import paste_masks

        return paste_masks
    raise AttributeError(f"module 'maskrcnn.export' has no attribute {name!r}")
