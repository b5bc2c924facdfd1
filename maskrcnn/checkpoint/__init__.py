from .native import load_native, save_model
from .torchvision import convert_state_dict, from_torchvision, read_state_dict

__all__ = ["convert_state_dict", "from_torchvision", "load_native", "read_state_dict", "save_model"]
