"""Model configuration and the one builder that reads it.

Option names follow torchvision's `MaskRCNN` keywords (box_score_thresh, rpn_nms_thresh, ...)
so its users can carry their settings over unchanged. The defaults are torchvision's model;
the options under "Detectron2" below turn it into Detectron2's R-CNN arithmetic one difference
at a time (all of them together: the `detectron2_mask_rcnn_R_50_FPN` preset).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..ops import MultiScaleRoIAlign, batched_nms, roi_align
from .anchors import AnchorGenerator
from .backbone.fpn import FPN, ResNetFPN
from .backbone.resnet import ResNet
from .layers import batch_norm, frozen_bn
from .mask_rcnn import MaskRCNN
from .roi_heads.box_head import BoxHead, BoxPredictor
from .roi_heads.keypoint_head import keypoint_branch
from .roi_heads.mask_head import MaskHead
from .roi_heads.roi_heads import RoIHeads
from .rpn import RPN, RPNHead
from .transform import IMAGENET_MEAN, IMAGENET_STD, ImageTransform


@dataclass
class ModelConfig:
    """Everything that defines a Mask R-CNN. `num_classes` counts the background class."""

    variant: str = "v1"  # "v1": the paper / torchvision maskrcnn_resnet50_fpn; "v2": ..._fpn_v2
    depth: int = 50
    base_width: int = 64
    num_classes: int = 91
    class_names: list[str] | None = None
    norm_eps: float = 1e-5  # frozen batch norm of the backbone; torchvision's published v1: 0.0
    trainable_backbone_layers: int = 3  # of 5 (stem, c2, c3, c4, c5), counted from the top
    fpn_channels: int = 256
    # input
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # anchors and RPN
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # RoI heads
    roi_sampling_ratio: int = 2
    roi_aligned: bool = False  # False: torchvision's RoIAlign; True: Detectron2's half-pixel one
    representation_size: int = 1024
    mask_head_channels: int = 256
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # Detectron2: each option is one way its R-CNN differs from torchvision's (defaults: torchvision)
    input_format: str = "RGB"  # channel order the network sees; "BGR" for Detectron2's MSRA weights
    pixel_scale: float = 1.0  # 255.0: the network sees 0..255 (image_mean/std in those units)
    resize: str = "torchvision"  # "detectron2": sizes rounded half up, Pillow's bilinear on uint8
    stride_in_1x1: bool = False  # the downsampling stride in each bottleneck's 1x1 conv (MSRA)
    anchor_round: bool = True  # False: cell anchors not rounded to integers (Detectron2)
    anchor_offset: float | None = None  # a number: grid at (i + offset) * stride (Detectron2: 0.0)
    rpn_min_size: float = 1e-3  # proposals narrower are dropped; 0: only empty ones (Detectron2)
    rpn_rank_by_logits: bool = False  # RPN NMS ranks by objectness logit, not probability
    roi_level_eps: float = 1e-6  # FPN level rule: floor(4 + log2(sqrt(area) / 224) + eps)
    roi_level_eps_in_log: bool = False  # True: floor(4 + log2(sqrt(area) / 224 + eps)) (Detectron2, 1e-8)
    box_min_size: float = 1e-2  # detections narrower are dropped; 0: only empty ones (Detectron2)
    background_last: bool = False  # Detectron2's predictor layout: background logit last, no background deltas or mask
    first_label: int = 1  # label of the first class in outputs and targets; 0: Detectron2's class index
    clip_output_boxes: bool = False  # clip rescaled boxes to the image, drop empty ones (Detectron2)
    mask_paste: str = "torchvision"  # "detectron2": grid_sample at pixel centers (ops.paste_masks_detectron2)
    # Keypoint R-CNN (torchvision's keypointrcnn_resnet50_fpn: mask_on=False, num_keypoints=17)
    mask_on: bool = True  # False: no mask branch (a keypoint-only or a box-only model)
    num_keypoints: int = 0  # > 0: a keypoint branch with that many keypoints per instance
    keypoint_head_channels: int = 512
    keypoint_names: list[str] | None = None  # COCO category "keypoints": for outputs and flips
    keypoint_skeleton: list[list[int]] | None = None  # COCO "skeleton": 1-based keypoint pairs

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) and k not in _LIST_OPTIONS else v for k, v in values.items()}
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


# options kept as lists (the rest of a JSON config's lists are tuples)
_LIST_OPTIONS = ("class_names", "keypoint_names", "keypoint_skeleton")


def build_model(config: ModelConfig) -> MaskRCNN:
    """The whole architecture in one place."""
    if config.variant not in ("v1", "v2"):
        raise ValueError(f"variant must be 'v1' or 'v2', got {config.variant!r}")
    v2 = config.variant == "v2"
    head_norm = batch_norm() if v2 else None
    body = ResNet(
        depth=config.depth,
        base_width=config.base_width,
        norm=frozen_bn(config.norm_eps),
        frozen_blocks=5 - config.trainable_backbone_layers,
        stride_in_1x1=config.stride_in_1x1,
    )
    c = config.fpn_channels
    backbone = ResNetFPN(body=body, fpn=FPN(in_channels=body.out_channels, out_channels=c, norm=head_norm),
                         out_channels=c)
    anchors = AnchorGenerator(sizes=config.anchor_sizes, aspect_ratios=config.aspect_ratios,
                              round_anchors=config.anchor_round, offset=config.anchor_offset,
                              strides=tuple(backbone.strides))
    rpn = RPN(
        head=RPNHead(in_channels=c, num_anchors=anchors.num_anchors_per_location, num_convs=2 if v2 else 1),
        anchor_generator=anchors,
        pre_nms_topk={True: config.rpn_pre_nms_top_n_train, False: config.rpn_pre_nms_top_n_test},
        post_nms_topk={True: config.rpn_post_nms_top_n_train, False: config.rpn_post_nms_top_n_test},
        nms_thresh=config.rpn_nms_thresh,
        score_thresh=config.rpn_score_thresh,
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        min_size=config.rpn_min_size,
        rank_by_logits=config.rpn_rank_by_logits,
        nms=batched_nms,
    )
    roi_strides = backbone.strides[:4]  # P2..P5; P6 feeds the RPN only
    # The operators are named here, so an export can build the same model around its own.
    pooler = dict(strides=roi_strides, sampling_ratio=config.roi_sampling_ratio, aligned=config.roi_aligned,
                  level_eps=config.roi_level_eps, level_eps_in_log=config.roi_level_eps_in_log,
                  roi_align=roi_align)
    box_head = BoxHead(
        in_channels=c,
        pooled_size=7,
        conv_dims=(c,) * 4 if v2 else (),
        fc_dims=(config.representation_size,) if v2 else (config.representation_size,) * 2,
        norm=head_norm,
    )
    m = config.mask_head_channels
    roi_heads = RoIHeads(
        box_pooler=MultiScaleRoIAlign(output_size=7, **pooler),
        box_head=box_head,
        box_predictor=BoxPredictor(in_features=box_head.out_features, num_classes=config.num_classes,
                                   background_last=config.background_last),
        mask_pooler=MultiScaleRoIAlign(output_size=14, **pooler) if config.mask_on else None,
        mask_head=MaskHead(in_channels=c, num_classes=config.num_classes, conv_dims=(m,) * 4, norm=head_norm,
                           background_channel=not config.background_last) if config.mask_on else None,
        **keypoint_branch(config, pooler, head_norm),
        fg_iou_thresh=config.box_fg_iou_thresh,
        bg_iou_thresh=config.box_bg_iou_thresh,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=config.bbox_reg_weights,
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.box_detections_per_img,
        min_size=config.box_min_size,
        nms=batched_nms,
    )
    transform = ImageTransform(min_size=config.min_size, max_size=config.max_size,
                               image_mean=config.image_mean, image_std=config.image_std,
                               input_format=config.input_format, pixel_scale=config.pixel_scale,
                               resize=config.resize)
    model = MaskRCNN(transform=transform, backbone=backbone, rpn=rpn, roi_heads=roi_heads,
                     num_classes=config.num_classes, class_names=config.class_names,
                     first_label=config.first_label, clip_output_boxes=config.clip_output_boxes,
                     mask_paste=config.mask_paste)
    model.config = config
    # Convolution weights channels-last to match the activations (see ResNetFPN.forward).
    return model.to(memory_format=torch.channels_last)


# Everything in which Detectron2's R-CNN (FPN, 4conv mask head, 2fc box head) differs from
# torchvision's, with Detectron2's defaults for the shared options (80 COCO classes).
DETECTRON2_OPTIONS: dict = dict(
    variant="v1", num_classes=81, norm_eps=1e-5,
    image_mean=(103.530, 116.280, 123.675), image_std=(1.0, 1.0, 1.0),  # BGR, 0..255
    input_format="BGR", pixel_scale=255.0, resize="detectron2",
    stride_in_1x1=True,
    anchor_round=False, anchor_offset=0.0,
    rpn_min_size=0.0, rpn_rank_by_logits=True, rpn_post_nms_top_n_train=1000,
    roi_sampling_ratio=0, roi_aligned=True, roi_level_eps=1e-8, roi_level_eps_in_log=True,
    box_min_size=0.0, background_last=True,
    first_label=0, clip_output_boxes=True, mask_paste="detectron2",
)

# Named presets: the only registry the project needs.
PRESETS: dict[str, dict] = {
    "maskrcnn_resnet50_fpn": dict(variant="v1", depth=50),
    "maskrcnn_resnet50_fpn_v2": dict(variant="v2", depth=50),
    "maskrcnn_resnet101_fpn": dict(variant="v1", depth=101),
    # A small model for CPU training and fast tests: ResNet-18 at a quarter of the width.
    "maskrcnn_resnet18_small": dict(
        variant="v1", depth=18, base_width=16, fpn_channels=64, representation_size=256,
        mask_head_channels=64, trainable_backbone_layers=5, min_size=256, max_size=512,
    ),
    # Detectron2's model zoo R-CNN (COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_{1x,3x}.yaml and
    # their kin): the same architecture, computed the way Detectron2 does; load its .pkl / .pth
    # files with maskrcnn.from_detectron2.
    "detectron2_mask_rcnn_R_50_FPN": dict(DETECTRON2_OPTIONS, depth=50),
    "detectron2_mask_rcnn_R_101_FPN": dict(DETECTRON2_OPTIONS, depth=101),
}


def build_preset(name: str, **overrides) -> MaskRCNN:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return build_model(ModelConfig.from_dict({**PRESETS[name], **overrides}))
