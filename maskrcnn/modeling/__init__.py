from .build import PRESETS, ModelConfig, build_model, build_preset
from .mask_rcnn import MaskRCNN

__all__ = ["PRESETS", "ModelConfig", "build_model", "build_preset", "MaskRCNN"]
