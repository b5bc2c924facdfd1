"""maskrcnn: Mask R-CNN instance segmentation in pure PyTorch."""
from .structures import Detections, ImageList, MaskRCNNOutput

__version__ = "0.1.0"
