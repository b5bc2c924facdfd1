"""The tiny model and images the inference tests share (fixtures are in conftest.py).

The model is maskrcnn_resnet18_small with 3 classes at 128 px, with a few output layers
re-initialized (seeded) so that it returns a spread of scores on both sides of 0.5 and masks
of varying shape: untrained heads otherwise score every box about 1/K with near-empty masks,
which would leave the thresholds, label map and file formats untested.
"""
from __future__ import annotations

import numpy as np
import torch

from maskrcnn import build_preset
from testing_utils import spread_output_layers

CLASS_NAMES = ["circle", "square", "triangle"]
# small RPN/detection budgets keep one forward well under a second on 2 cores
TINY_OPTIONS = dict(
    num_classes=4, class_names=CLASS_NAMES, min_size=128, max_size=256,
    rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_detections_per_img=20,
)


def make_tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_preset("maskrcnn_resnet18_small", **TINY_OPTIONS)
    spread_output_layers(model)
    return model.eval()


def make_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """uint8 (H, W, 3): smooth noise with a few bright blobs, so features vary."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = rng.integers(0, 60, (height, width, 3)).astype(np.float64)
    for _ in range(3):
        cy, cx, r = rng.uniform(10, height - 10), rng.uniform(10, width - 10), rng.uniform(8, 25)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.integers(80, 190, 3)
    return image.clip(0, 255).astype(np.uint8)
