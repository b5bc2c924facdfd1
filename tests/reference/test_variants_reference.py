"""The paper's variants against torchvision 0.29.1 (issue 11): RoIWarp and the multi-scale
RoIPool against torchvision's compiled ops, and Faster R-CNN (fasterrcnn_resnet50_fpn and _v2)
loaded by `from_torchvision(..., variant="faster")` against torchvision's own model on the
parity recipe's weights.

    python -m pytest -q -m reference tests/reference/test_variants_reference.py
"""
from __future__ import annotations

import functools

import pytest
import torch

from reference_utils import (PROPOSAL_ATOL, PROPOSAL_FRACTION, coffee_image, pair_detections, proposals_nearest,
                             recipe_state_dict, torchvision)
from test_ops_reference import roi_align_atol, roi_case
from torchvision.models import detection as tv_detection
from torchvision.ops.poolers import LevelMapper

import maskrcnn
from maskrcnn.ops import MultiScaleRoIAlign, roi_pool, roi_warp

tv_ops = torchvision.ops


# ---------------------------------------------------------------------------------------------
# RoI extractors
# ---------------------------------------------------------------------------------------------


def c_round(values: torch.Tensor) -> torch.Tensor:
    """C's round() (torchvision's RoIPool rounding), written independently of ours."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale, map_hw", [(1.0, (13, 17)), (0.25, (20, 15)), (1 / 32, (9, 12))])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_warp_is_torchvision_roi_align_on_the_rounded_box(dtype, scale, map_hw, sampling_ratio):
    features, rois = roi_case(int(1 / scale) + 11, scale=scale, map_hw=map_hw, dtype=dtype)
    quantized = torch.cat([rois[:, :1], c_round(rois[:, 1:] * scale)], 1)
    theirs = tv_ops.roi_align(features, quantized, 7, 1.0, sampling_ratio, False)
    ours = roi_warp(features, rois, 7, scale, sampling_ratio)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=roi_align_atol(dtype, features, max(map_hw)))


@pytest.mark.parametrize("seed", [0, 1])
def test_multiscale_roi_pool_equals_torchvision_per_level(seed):
    # our pooler with RoIPool as its operator: torchvision's LevelMapper picks the level and its
    # compiled roi_pool pools each box; max pooling is bit-exact
    g = torch.Generator().manual_seed(seed)
    strides = [4, 8, 16, 32]
    features = [torch.rand(2, 4, 512 // s, 768 // s, generator=g) for s in strides]
    xy = torch.rand(300, 2, generator=g) * torch.tensor([700.0, 450.0]) - 50
    wh = torch.exp(torch.rand(300, 2, generator=g) * 6.6) + 1  # 2 to 740 px: every level
    boxes = torch.cat([xy, xy + wh], 1)
    per_image = [boxes[:170], boxes[170:]]
    ours = MultiScaleRoIAlign(strides=strides, output_size=7, roi_align=roi_pool)(features, per_image)
    levels = LevelMapper(2, 5)(per_image)
    index = torch.cat([torch.zeros(170), torch.ones(130)])[:, None]
    rois = torch.cat([index, boxes], 1)
    theirs = torch.zeros_like(ours)
    for level, stride in enumerate(strides):
        sel = torch.nonzero(levels == level).squeeze(1)
        theirs[sel] = tv_ops.roi_pool(features[level], rois[sel], 7, 1.0 / stride)
    assert len(levels.unique()) == 4
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Faster R-CNN
# ---------------------------------------------------------------------------------------------

TV_FASTER = {"faster": tv_detection.fasterrcnn_resnet50_fpn, "faster_v2": tv_detection.fasterrcnn_resnet50_fpn_v2}
RECIPE = {"faster": "v1", "faster_v2": "v2"}
SCORE_THRESH = 0.1
SCORE_ATOL = 1e-4  # as test_model_reference.py (the fixture README's tolerances)
BOX_ATOL = 1e-2  # px in the model's resolution; images here are scaled by at most 1.5x
SETTINGS = {  # (variant, options): 320/533 as the v1/v2 sweep, and the defaults at 800/1333
    "faster-320": ("faster", dict(min_size=320, max_size=533, rpn_post_nms_top_n_test=500)),
    "faster-800": ("faster", {}),
    "faster_v2-320": ("faster_v2", dict(min_size=320, max_size=533, rpn_post_nms_top_n_test=200)),
}
CASES = [("faster-320", [(375, 500)]), ("faster-320", [(427, 640), (200, 150)]), ("faster-800", [(480, 640)]),
         ("faster_v2-320", [(333, 500)])]


def faster_state_dict(variant: str) -> dict:
    """The parity recipe's Mask R-CNN weights without the mask branch: exactly the keys of
    torchvision's Faster R-CNN of the same layout."""
    return {k: v for k, v in recipe_state_dict(RECIPE[variant]).items() if not k.startswith("roi_heads.mask_")}


@functools.lru_cache(maxsize=None)
def models(setting: str):
    variant, options = SETTINGS[setting]
    options = dict(options, box_score_thresh=SCORE_THRESH)
    state = faster_state_dict(variant)
    tv = TV_FASTER[variant](weights=None, weights_backbone=None, num_classes=91, **options)
    tv.load_state_dict(state, strict=True)
    return tv.eval(), maskrcnn.from_torchvision(state, variant, **options).eval()


def run(model, images):
    seen = {}
    hook = model.rpn.register_forward_hook(lambda m, i, out: seen.__setitem__("proposals", out[0]))
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        hook.remove()
    dets = [dict(boxes=d.boxes, scores=d.scores, labels=d.labels, masks=d.masks) for d in out.detections] \
        if hasattr(out, "detections") else out
    return seen["proposals"], dets


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    models.cache_clear()


@pytest.mark.parametrize("setting, sizes", CASES, ids=lambda v: v if isinstance(v, str) else "+".join(f"{h}x{w}" for h, w in v))
def test_faster_rcnn_matches_torchvision(setting, sizes):
    tv, ours = models(setting)
    assert not ours.roi_heads.has_mask
    images = [coffee_image(h, w, seed=h * 7919 + w) for h, w in sizes]
    ref_props, ref = run(tv, images)
    our_props, dets = run(ours, images)
    for k, (r, o) in enumerate(zip(ref, dets)):
        name = f"{setting} image {k} {sizes[k]}"
        assert "masks" not in r and o["masks"] is None
        close = proposals_nearest(ref_props[k], our_props[k]) <= PROPOSAL_ATOL
        back = proposals_nearest(our_props[k], ref_props[k]) <= PROPOSAL_ATOL
        assert close.float().mean() >= PROPOSAL_FRACTION and back.float().mean() >= PROPOSAL_FRACTION, name
        assert len(r["boxes"]) > 5, f"{name}: too few detections to compare ({len(r['boxes'])})"
        ri, oi = pair_detections(r, o)
        # every detection paired, except one whose score is within rounding of the threshold
        for side, d, paired in (("torchvision", r, ri), ("ours", o, oi)):
            for i in sorted(set(range(len(d["boxes"]))) - set(paired.tolist())):
                assert abs(d["scores"][i].item() - SCORE_THRESH) <= SCORE_ATOL, f"{name}: {side}'s detection {i} unpaired"
        assert (o["boxes"][oi] - r["boxes"][ri]).abs().max() <= BOX_ATOL * 1.5, name
        assert (o["scores"][oi] - r["scores"][ri]).abs().max() <= SCORE_ATOL, name
        assert torch.equal(o["labels"][oi], r["labels"][ri])


def test_faster_checkpoint_asks_for_the_faster_variant():
    state = faster_state_dict("faster")
    with pytest.raises(ValueError, match="has no mask branch.*variant='faster'"):
        maskrcnn.from_torchvision(state, "v1")
    with pytest.raises(ValueError, match="has a mask branch.*variant='v1'"):
        maskrcnn.from_torchvision(recipe_state_dict("v1"), "faster")
