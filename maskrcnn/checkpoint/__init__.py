from .detectron2 import convert_detectron2_state_dict, from_detectron2, is_detectron2_state_dict
from .native import load_native, save_model
from .torchvision import convert_state_dict, from_torchvision, read_state_dict

__all__ = ["convert_detectron2_state_dict", "convert_state_dict", "from_detectron2", "from_torchvision",
           "is_detectron2_state_dict", "load_native", "read_state_dict", "save_model"]
