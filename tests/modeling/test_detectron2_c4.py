"""from_detectron2 on a Detectron2 R50-C4 Mask R-CNN (mask_rcnn_R_50_C4_{1x,3x}) state dict,
whole path: the C4 preset picked from the keys, every tensor in the module its Detectron2 name
says, the config equal to Detectron2's published C4 config, and a forward pass.

Detectron2 itself cannot be installed here, so this shows the wiring, not numerical parity with
Detectron2 (the FPN model's parity is tests/modeling/test_detectron2_parity.py, on a fixture).
"""
from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

from maskrcnn.checkpoint.detectron2 import detectron2_key_to_ours, from_detectron2
from maskrcnn.checkpoint.seeded import DETECTRON2_RECIPE, seeded_state_dict
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.build import PRESETS
from maskrcnn.modeling.roi_heads.res5_head import Res5RoIHeads
from maskrcnn.ops import roi_align

from .test_c4 import DETECTRON2_C4_SHAPES, detectron2_c4_keys

# Detectron2's mask_rcnn_R_50_C4_3x.yaml = Base-RCNN-C4.yaml (RPN.PRE_NMS_TOPK_TEST 6000,
# POST_NMS_TOPK_TEST 1000, ROI_HEADS.NAME Res5ROIHeads) + MASK_ON True, RESNETS.DEPTH 50, on
# detectron2/config/defaults.py (facebookresearch/detectron2): the values below, by our names.
DETECTRON2_C4_CONFIG = {
    "architecture": "c4",  # RESNETS.OUT_FEATURES ["res4"], RPN/ROI_HEADS.IN_FEATURES ["res4"]
    "depth": 50, "groups": 1, "width_per_group": 64, "base_width": 64,  # DEPTH 50, NUM_GROUPS 1, WIDTH_PER_GROUP 64
    "stride_in_1x1": True,  # RESNETS.STRIDE_IN_1X1 (MSRA)
    "backbone_norm": "frozen_bn", "norm_eps": 1e-5,  # RESNETS.NORM "FrozenBN" (its eps 1e-5)
    "num_classes": 81,  # ROI_HEADS.NUM_CLASSES 80, plus background
    "input_format": "BGR", "pixel_scale": 255.0,  # INPUT.FORMAT "BGR", pixels 0..255
    "image_mean": (103.530, 116.280, 123.675), "image_std": (1.0, 1.0, 1.0),  # MODEL.PIXEL_MEAN / PIXEL_STD
    "min_size": 800, "max_size": 1333,  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    "anchor_sizes": (32, 64, 128, 256, 512), "aspect_ratios": (0.5, 1.0, 2.0),  # ANCHOR_GENERATOR (one level)
    "anchor_offset": 0.0, "anchor_round": False,  # ANCHOR_GENERATOR.OFFSET 0.0; cell anchors not rounded
    "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 1000,  # Base-RCNN-C4.yaml
    "rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000,  # RPN.PRE/POST_NMS_TOPK_TRAIN
    "rpn_nms_thresh": 0.7, "rpn_bg_iou_thresh": 0.3, "rpn_fg_iou_thresh": 0.7,  # RPN.NMS_THRESH, IOU_THRESHOLDS
    "rpn_batch_size_per_image": 256, "rpn_positive_fraction": 0.5,
    "rpn_min_size": 0.0,  # PROPOSAL_GENERATOR.MIN_SIZE 0
    "roi_aligned": True, "roi_sampling_ratio": 0,  # POOLER_TYPE "ROIAlignV2", POOLER_SAMPLING_RATIO 0
    "box_fg_iou_thresh": 0.5, "box_bg_iou_thresh": 0.5,  # ROI_HEADS.IOU_THRESHOLDS [0.5]
    "box_batch_size_per_image": 512, "box_positive_fraction": 0.25,
    "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_detections_per_img": 100,  # *_TEST, DETECTIONS_PER_IMAGE
    "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0),  # ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    "mask_on": True, "mask_head_channels": 256,  # MASK_ON; ROI_MASK_HEAD.CONV_DIM (the deconv's width)
    "class_agnostic_masks": False, "mask_loss": "sigmoid",  # ROI_MASK_HEAD.CLS_AGNOSTIC_MASK False
    "background_last": True, "first_label": 0,  # Detectron2's predictor layout and class index 0..79
}
POOLER_RESOLUTION = 14  # ROI_BOX_HEAD / ROI_MASK_HEAD.POOLER_RESOLUTION
RPN_BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # RPN.BBOX_REG_WEIGHTS


@functools.lru_cache(maxsize=1)
def detectron2_c4_state() -> dict:
    """Seeded weights of the full-size R50-C4 Mask R-CNN in Detectron2's names (80 classes):
    every tensor different, so one landing in the wrong place shows."""
    own = build_model(ModelConfig.from_dict({**PRESETS["detectron2_mask_rcnn_R_50_C4"], "min_size": 64})).state_dict()
    keys = [[k, list(own[detectron2_key_to_ours(k)].shape), "float32"] for k in detectron2_c4_keys()]
    return seeded_state_dict(keys, DETECTRON2_RECIPE)


@pytest.fixture(scope="module")
def loaded():
    state = detectron2_c4_state()
    return state, from_detectron2({"model": state})


def test_every_tensor_lands_where_its_detectron2_name_says(loaded):
    state, model = loaded
    ours = model.state_dict()
    assert len(state) == len(ours) == len(set(map(detectron2_key_to_ours, state)))
    for key, value in state.items():
        assert torch.equal(ours[detectron2_key_to_ours(key)], value), key
    for key, shape in DETECTRON2_C4_SHAPES.items():  # Detectron2's published model's shapes
        assert tuple(state[key].shape) == shape, key
    # The modules by role, as Detectron2's names say: stem 7x7/2; res2..res4 the backbone, res5
    # the RoI head; MSRA blocks stride in conv1 (the first block of res3, res4, res5); the
    # shortcut of each stage's first block
    modules = dict(model.named_modules())
    for key in state:
        if not key.endswith(".weight") or ".norm." in key:
            continue
        module = modules[detectron2_key_to_ours(key)[: -len(".weight")]]
        if m := re.match(r"(backbone|roi_heads)\.res(\d)\.(\d+)\.(conv1|conv2|conv3|shortcut)\.weight$", key):
            stage, block, conv = int(m.group(2)), int(m.group(3)), m.group(4)
            assert (m.group(1) == "roi_heads") == (stage == 5), key
            downsampling = stage > 2 and block == 0 and conv in ("conv1", "shortcut")
            assert isinstance(module, nn.Conv2d) and module.stride == ((2, 2) if downsampling else (1, 1)), key
            assert module.kernel_size == ((3, 3) if conv == "conv2" else (1, 1)), key
    stem = modules[detectron2_key_to_ours("backbone.stem.conv1.weight")[: -len(".weight")]]
    assert stem.kernel_size == (7, 7) and stem.stride == (2, 2)
    deconv = modules[detectron2_key_to_ours("roi_heads.mask_head.deconv.weight")[: -len(".weight")]]
    assert isinstance(deconv, nn.ConvTranspose2d) and deconv.stride == (2, 2)


def test_config_is_detectron2s_published_c4_config(loaded):
    _, model = loaded
    config = model.config.to_dict()
    for key, value in DETECTRON2_C4_CONFIG.items():
        assert config[key] == value, f"{key}: ours {config[key]!r}, Detectron2 {value!r}"
    heads = model.roi_heads
    assert isinstance(heads, Res5RoIHeads)
    pooler = heads.box_pooler
    assert (pooler.output_size, pooler.strides, pooler.sampling_ratio, pooler.aligned) == (POOLER_RESOLUTION, [16], 0, True)
    assert pooler.roi_align is roi_align and heads.mask_pooler is pooler  # res5 once, for both branches
    assert model.rpn.anchor_generator.num_anchors_per_location == 15 and model.backbone.strides == [16]
    assert tuple(model.rpn.box_coder.weights) == RPN_BBOX_REG_WEIGHTS
    assert tuple(heads.box_coder.weights) == DETECTRON2_C4_CONFIG["bbox_reg_weights"]
    assert heads.mask_head.predictor.out_channels == 80 and not hasattr(heads.mask_head.convs, "0")


def test_forward_gives_detections_of_the_right_shapes():
    # small inputs and few RoIs: res5 at full width costs ~1 GFLOP per RoI
    model = from_detectron2({"model": detectron2_c4_state()}, min_size=128, max_size=224,
                            rpn_post_nms_top_n_test=30, box_detections_per_img=5)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 100, 90, generator=g)]
    with torch.no_grad():
        out = model(images, score_thresh=0.0)
    for image, det in zip(images, out.detections):
        n = det.boxes.shape[0]
        assert n == 5 and det.boxes.shape == (n, 4) and det.scores.shape == det.labels.shape == (n,)
        assert det.masks.shape == (n, *image.shape[1:])
        assert int(det.labels.min()) >= 0 and int(det.labels.max()) <= 79  # Detectron2's class index
        assert (det.boxes[:, 2] <= image.shape[2]).all() and (det.boxes[:, 3] <= image.shape[1]).all()
