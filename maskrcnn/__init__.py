"""maskrcnn: Mask R-CNN instance segmentation in pure PyTorch."""
from .checkpoint import from_detectron2, from_torchvision
from .modeling import MaskRCNN, ModelConfig, build_model, build_preset
from .structures import Detections, ImageList, MaskRCNNOutput

__version__ = "0.1.0"

__all__ = [
    "Detections", "ImageList", "MaskRCNN", "MaskRCNNOutput", "ModelConfig",
    "build_model", "build_preset", "export_onnx", "from_detectron2", "from_torchvision", "load_model",
]


def __getattr__(name: str):
    # Lazy: `import maskrcnn` for training should not pay for PIL/pycocotools/inference code.
    if name == "load_model":
        from .inference.api import load_model

        return load_model
    if name == "export_onnx":
        from .export.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")
