"""Models, images and comparisons shared by the ONNX tests (fixtures are in conftest.py)."""
from __future__ import annotations

import numpy as np
import torch

from maskrcnn import build_preset
from maskrcnn.ops import box_iou
from testing_utils import spread_output_layers

CLASS_NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = {1: 11, 2: 12, 3: 17}
# maskrcnn_resnet18_small at 128 px with small RPN / detection budgets: fast to export and run
SMALL_OPTIONS = dict(
    num_classes=4, class_names=CLASS_NAMES, min_size=128, max_size=256,
    rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_detections_per_img=20,
)
# Limits of the issue: boxes within 1e-2 px, scores within 1e-4, masks within 2/255.
BOX_ATOL, SCORE_ATOL, MASK_ATOL = 1e-2, 1e-4, 2 / 255


def make_small_model(variant: str = "v1", seed: int = 0):
    """The small preset with seeded output layers that spread the scores on both sides of 0.5
    and give masks of varying shape (untrained heads score every box about 1/K)."""
    torch.manual_seed(seed)
    model = build_preset("maskrcnn_resnet18_small", variant=variant, **SMALL_OPTIONS)
    spread_output_layers(model)
    return model.eval()


def make_image(seed: int, height: int, width: int) -> torch.Tensor:
    """float32 (3, H, W) in [0, 1]: smooth noise with a few bright blobs, so features vary."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = rng.integers(0, 60, (height, width, 3)).astype(np.float64)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.1, 0.3) * min(height, width) + 4
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.integers(80, 190, 3)
    return torch.from_numpy(image.clip(0, 255) / 255).permute(2, 0, 1).float()


def assert_same_detections(ref, det, *, masks: bool = True) -> None:
    """Same count and labels; each reference detection matched to ours by label and IoU (not by
    index: two scores a rounding apart may swap places), then boxes, scores and masks within
    the limits."""
    assert len(det) == len(ref), f"{len(det)} detections, eager has {len(ref)}"
    assert sorted(det.labels.tolist()) == sorted(ref.labels.tolist())
    if len(ref) == 0:
        return
    iou = box_iou(ref.boxes, det.boxes)
    iou[ref.labels[:, None] != det.labels[None, :]] = -1
    best = iou.max(dim=1)
    assert (best.values > 0.9).all(), "unmatched detections"
    m = best.indices
    assert m.unique().numel() == m.numel(), "two eager detections matched one of ours"
    torch.testing.assert_close(det.boxes[m], ref.boxes, atol=BOX_ATOL, rtol=0)
    torch.testing.assert_close(det.scores[m], ref.scores, atol=SCORE_ATOL, rtol=0)
    if masks:
        assert det.masks.shape[1:] == ref.masks.shape[1:]
        torch.testing.assert_close(det.masks[m], ref.masks, atol=MASK_ATOL, rtol=0)
