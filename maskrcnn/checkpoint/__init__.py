from .torchvision import convert_state_dict, from_torchvision, read_state_dict

__all__ = ["convert_state_dict", "from_torchvision", "read_state_dict"]
