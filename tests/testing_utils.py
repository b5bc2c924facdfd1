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


def need_export() -> None:
    """Skip, saying why, where this torch cannot export to ONNX (torch < 2.6): the package's own
    reason, so the skip and the error a user gets say the same."""
    import pytest

    from maskrcnn.export.onnx import export_unsupported_reason

    reason = export_unsupported_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)


def load_coffee() -> torch.Tensor:
    """coffee.png as the fixtures' input: RGB uint8 -> float32 (3, H, W) / 255."""
    array = np.array(Image.open(PARITY / "coffee.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def parity_keys(variant: str) -> list:
    return json.loads((PARITY / f"{variant}_keys.json").read_text())


# A narrow Detectron2 R-50-FPN Mask R-CNN (80 COCO classes), for fast end-to-end tests.
SMALL_DETECTRON2 = dict(base_width=8, fpn_channels=16, representation_size=32, mask_head_channels=16)


def small_detectron2_state_dict(num_classes: int = 81) -> dict:
    """SMALL_DETECTRON2 weights in Detectron2's names (the parity fixture's key list, narrow
    shapes), seeded by the fixture's recipe."""
    from maskrcnn.checkpoint.detectron2 import detectron2_key_to_ours
    from maskrcnn.checkpoint.seeded import DETECTRON2_RECIPE, seeded_state_dict
    from maskrcnn.modeling.build import DETECTRON2_OPTIONS, ModelConfig, build_model

    config = ModelConfig.from_dict({**DETECTRON2_OPTIONS, **SMALL_DETECTRON2, "num_classes": num_classes})
    own = build_model(config).state_dict()
    names = [k for k, _, _ in json.loads((FIXTURES / "detectron2_parity" / "keys.json").read_text())]
    return seeded_state_dict([[k, list(own[detectron2_key_to_ours(k)].shape), "float32"] for k in names],
                             DETECTRON2_RECIPE)


def spread_output_layers(model) -> None:
    """Seeded output layers (4 classes) that spread the scores on both sides of 0.5 and give
    masks of varying shape: untrained heads score every box about 1/K. Draws from torch's
    global generator, so seed it first."""
    with torch.no_grad():
        box = model.roi_heads.box_predictor
        box.cls_score.weight.normal_(0, 2.0)
        box.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 0.8, 0.6]))
        box.bbox_pred.weight.normal_(0, 0.05)
        mask = model.roi_heads.mask_head.predictor
        mask.weight.normal_(0, 0.5)
        mask.bias.zero_()
