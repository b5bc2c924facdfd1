"""Helpers shared by the tests (importable as `testing_utils`; pytest puts tests/ on the path)."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "torchvision_parity"


def load_coffee() -> torch.Tensor:
    """coffee.png as the fixtures' input: RGB uint8 -> float32 (3, H, W) / 255."""
    array = np.array(Image.open(PARITY / "coffee.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def parity_keys(variant: str) -> list:
    return json.loads((PARITY / f"{variant}_keys.json").read_text())
