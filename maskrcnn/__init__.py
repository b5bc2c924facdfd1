"""maskrcnn: Mask R-CNN instance segmentation in pure PyTorch."""
from .checkpoint import from_torchvision
from .modeling import MaskRCNN, ModelConfig, build_model, build_preset
from .structures import Detections, ImageList, MaskRCNNOutput

__version__ = "0.1.0"

__all__ = [
    "Detections", "ImageList", "MaskRCNN", "MaskRCNNOutput", "ModelConfig",
    "build_model", "build_preset", "from_torchvision",
]
