"""Helpers shared by the tests (importable as `testing_utils`; pytest puts tests/ on the path)."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "torchvision_parity"

# A 4x4 mask and its Kaggle RLE, worked out by hand: the column-major order reads column 0
# top to bottom (pixels 1-4), then column 1 (5-8), ...; runs are pixels 4-6, 9-10 and 15-16.
LITERAL_MASK = np.array(
    [[0, 1, 1, 0],
     [0, 1, 1, 0],
     [0, 0, 0, 1],
     [1, 0, 0, 1]], dtype=bool)
LITERAL_RLE = "4 3 9 2 15 2"


def load_coffee() -> torch.Tensor:
    """coffee.png as the fixtures' input: RGB uint8 -> float32 (3, H, W) / 255."""
    array = np.array(Image.open(PARITY / "coffee.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def parity_keys(variant: str) -> list:
    return json.loads((PARITY / f"{variant}_keys.json").read_text())
