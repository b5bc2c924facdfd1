"""Model configuration and the one builder that reads it.

Option names follow torchvision's `MaskRCNN` keywords (box_score_thresh, rpn_nms_thresh, ...)
so its users can carry their settings over unchanged. The defaults are torchvision's model;
the options under "Detectron2" below turn it into Detectron2's R-CNN arithmetic one difference
at a time (all of them together: the `detectron2_mask_rcnn_R_50_FPN` preset).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..ops import MultiScaleRoIAlign, batched_nms, roi_align, roi_pool, roi_warp
from .anchors import AnchorGenerator
from .backbone.c4 import ResNetC4
from .backbone.fpn import FPN, ResNetFPN
from .backbone.resnet import RESNET_SPECS, ResNet, resnet_stage
from .config_checks import check_c4_options, check_model_config
from .layers import NormFactory, freeze_batch_norm, norm_factory
from .mask_rcnn import MaskRCNN
from .roi_heads.box_head import BoxHead, BoxPredictor
from .roi_heads.keypoint_head import keypoint_branch
from .roi_heads.mask_head import MaskHead, MLPMaskHead
from .roi_heads.res5_head import Res5RoIHeads
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
    # The paper's ablations (Table 2b, c, e; Table 3); defaults: its final design
    mask_on: bool = True  # False: detection only (Faster R-CNN), no mask branch built or run
    roi_extractor: str = "align"  # "pool": quantized max (Fast R-CNN's RoIPool); "warp": quantized box, bilinear
    mask_loss: str = "sigmoid"  # "softmax": multinomial over the classes, the masks compete
    class_agnostic_masks: bool = False  # True: one mask for every class
    mask_head: str = "fcn"  # "mlp": fully connected layers (representation_size wide) to K x 28 x 28
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
    # Backbones and norm layers (the paper's variants; training without ImageNet weights)
    architecture: str = "fpn"  # "c4": ResNet res2-res4 (stride 16) + res5 as the shared RoI head (the paper's C4)
    groups: int = 1  # ResNeXt cardinality: 32 for ResNeXt-50 32x4d and ResNeXt-101 32x8d
    width_per_group: int = 64  # ResNeXt channels per group (at base_width 64): 4 (32x4d) or 8 (32x8d)
    backbone_norm: str = "frozen_bn"  # as published; "bn", "sync_bn" (synchronized under DDP) or "gn" train
    head_norm: str | None = None  # FPN and head convs: None = the variant's ("none" v1, "bn" v2); "bn" / "sync_bn" / "gn"
    gn_groups: int = 32  # groups of every GroupNorm (32 as Wu & He 2018; must divide each layer's width)
    # Keypoint R-CNN (torchvision's keypointrcnn_resnet50_fpn: mask_on=False, num_keypoints=17)
    num_keypoints: int = 0  # > 0: a keypoint branch with that many keypoints per instance
    keypoint_head_channels: int = 512
    keypoint_names: list[str] | None = None  # COCO category "keypoints": for outputs and flips
    keypoint_skeleton: list[list[int]] | None = None  # COCO "skeleton": 1-based keypoint pairs

    def __post_init__(self) -> None:
        check_model_config(self)  # every option range-checked; ModelConfigError names it
        check_head_switches(self)
        _check_backbone_options(self)
        check_c4_options(self)

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


# RoI feature extractors by `ModelConfig.roi_extractor`; each is called as roi_align is.
ROI_EXTRACTORS = {"align": roi_align, "pool": roi_pool, "warp": roi_warp}


def check_head_switches(config: ModelConfig) -> None:
    """The ablation switches' values and the combinations that have no meaning."""
    choices = {"roi_extractor": tuple(ROI_EXTRACTORS), "mask_loss": ("sigmoid", "softmax"), "mask_head": ("fcn", "mlp")}
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if config.mask_loss == "softmax" and config.class_agnostic_masks:
        raise ValueError("mask_loss='softmax' takes a softmax over the classes' masks: it needs class-specific "
                         "masks (class_agnostic_masks=False)")
    if config.mask_loss == "softmax" and config.background_last:
        raise ValueError("mask_loss='softmax' needs a background mask channel, which background_last=True "
                         "(Detectron2's layout) does not have")


def _box_sampling_and_postprocess(config: ModelConfig) -> dict:
    """The RoI heads' options that FPN and C4 models share: proposal matching and sampling in
    training, box post-processing in inference."""
    return dict(
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


def build_model(config: ModelConfig) -> MaskRCNN:
    """The whole architecture in one place."""
    if config.variant not in ("v1", "v2"):
        raise ValueError(f"variant must be 'v1' or 'v2', got {config.variant!r}")
    v2 = config.variant == "v2"
    backbone_norm, head_norm = _norms(config)
    c4 = config.architecture == "c4"  # its option combinations: config_checks.check_c4_options
    body = ResNet(
        depth=config.depth,
        base_width=config.base_width,
        norm=backbone_norm,
        frozen_blocks=5 - config.trainable_backbone_layers,
        stride_in_1x1=config.stride_in_1x1,
        groups=config.groups,
        width_per_group=config.width_per_group,
        num_stages=3 if c4 else 4,
    )
    c = config.fpn_channels
    if c4:
        backbone = ResNetC4(body=body)
        c = backbone.out_channels  # the RPN runs on C4 itself
    else:
        backbone = ResNetFPN(body=body, fpn=FPN(in_channels=body.out_channels, out_channels=c, norm=head_norm),
                             out_channels=c)
    # C4: every size on its one level (15 anchors per location)
    anchors = AnchorGenerator(sizes=(tuple(config.anchor_sizes),) if c4 else config.anchor_sizes,
                              aspect_ratios=config.aspect_ratios,
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
                  roi_align=ROI_EXTRACTORS[config.roi_extractor])
    if c4:
        roi_heads = _res5_roi_heads(config, body, backbone_norm, pooler)
        return _assemble(config, backbone, rpn, roi_heads)
    box_head = BoxHead(
        in_channels=c,
        pooled_size=7,
        conv_dims=(c,) * 4 if v2 else (),
        fc_dims=(config.representation_size,) if v2 else (config.representation_size,) * 2,
        norm=head_norm,
    )
    mask_pooler = mask_head = None
    if config.mask_on:
        mask_pooler = MultiScaleRoIAlign(output_size=14, **pooler)
        mask_layout = dict(num_classes=config.num_classes, background_channel=not config.background_last,
                           class_agnostic=config.class_agnostic_masks)
        if config.mask_head == "mlp":
            mask_head = MLPMaskHead(in_channels=c, pooled_size=14, fc_dims=(config.representation_size,) * 2,
                                    **mask_layout)
        else:
            mask_head = MaskHead(in_channels=c, conv_dims=(config.mask_head_channels,) * 4, norm=head_norm,
                                 **mask_layout)
    roi_heads = RoIHeads(
        box_pooler=MultiScaleRoIAlign(output_size=7, **pooler),
        box_head=box_head,
        box_predictor=BoxPredictor(in_features=box_head.out_features, num_classes=config.num_classes,
                                   background_last=config.background_last),
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        **keypoint_branch(config, pooler, head_norm),
        **_box_sampling_and_postprocess(config),
        mask_loss=config.mask_loss,
    )
    return _assemble(config, backbone, rpn, roi_heads)


def _assemble(config: ModelConfig, backbone, rpn: RPN, roi_heads: RoIHeads) -> MaskRCNN:
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


_BACKBONE_NORMS = ("frozen_bn", "bn", "sync_bn", "gn")
_HEAD_NORMS = ("none", "bn", "sync_bn", "gn")  # no frozen_bn: the heads have no pretrained statistics


def _check_backbone_options(config: ModelConfig) -> None:
    """Clear errors for the backbone and norm options, when a config is made (so YAML configs
    fail as they are read)."""
    if config.architecture not in ("fpn", "c4"):
        raise ValueError(f"architecture must be 'fpn' or 'c4', got {config.architecture!r}")
    if config.backbone_norm not in _BACKBONE_NORMS:
        raise ValueError(f"backbone_norm must be one of {', '.join(_BACKBONE_NORMS)}, got {config.backbone_norm!r}")
    if config.head_norm is not None and config.head_norm not in _HEAD_NORMS:
        raise ValueError(f"head_norm must be null (the variant's) or one of {', '.join(_HEAD_NORMS)}, "
                         f"got {config.head_norm!r}")
    for name in ("gn_groups", "groups", "width_per_group"):
        if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)!r}")


def _norms(config: ModelConfig) -> tuple[NormFactory, NormFactory | None]:
    """The backbone's and the heads' norm layers."""
    head = config.head_norm if config.head_norm is not None else ("bn" if config.variant == "v2" else "none")
    return (norm_factory(config.backbone_norm, eps=config.norm_eps, gn_groups=config.gn_groups),
            norm_factory(head, gn_groups=config.gn_groups))


def _res5_roi_heads(config: ModelConfig, body: ResNet, norm: NormFactory, pooler: dict) -> Res5RoIHeads:
    """The C4 model's RoI heads: 14x14 RoIAlign of C4 (stride 16), the ResNet's res5 stage
    (stride 2 in its first block, the backbone's norm), then the box predictor on its mean and
    the mask deconv on its 7x7 map."""
    block, layers = RESNET_SPECS[config.depth]
    width = config.base_width * 8
    res5 = resnet_stage(block, body.out_channels[-1], width, layers[3], 2, norm, **body.block_options)
    if config.trainable_backbone_layers == 0:  # the whole ResNet frozen, res5 included
        res5 = freeze_batch_norm(res5).requires_grad_(False)
    res5_channels = width * block.expansion
    mask_head = None
    if config.mask_on:  # the switches that apply to C4 (check_c4_options refuses the others)
        mask_head = MaskHead(in_channels=res5_channels, num_classes=config.num_classes, conv_dims=(),
                             deconv_channels=config.mask_head_channels, background_channel=not config.background_last,
                             class_agnostic=config.class_agnostic_masks)
    return Res5RoIHeads(
        res5=res5,
        res5_channels=res5_channels,
        pooler=MultiScaleRoIAlign(output_size=14, **{**pooler, "strides": [16]}),
        box_predictor=BoxPredictor(in_features=res5_channels, num_classes=config.num_classes,
                                   background_last=config.background_last),
        mask_head=mask_head,
        **_box_sampling_and_postprocess(config),
        mask_loss=config.mask_loss,
    )


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

# Detectron2's RPN top-k for C4 models (its defaults, with Base-RCNN-C4.yaml's test values).
_C4_RPN: dict = dict(rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,
                     rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=1000)

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
    # ResNeXt backbones (grouped 3x3 convs; torchvision's ImageNet resnext50_32x4d / resnext101_32x8d load into them)
    "maskrcnn_resnext50_32x4d_fpn": dict(variant="v1", depth=50, groups=32, width_per_group=4),
    "maskrcnn_resnext101_32x8d_fpn": dict(variant="v1", depth=101, groups=32, width_per_group=8),
    # The paper's ResNet-50-C4: RPN and 14x14 RoIAlign on res4 (stride 16), res5 as the shared RoI head;
    # the RPN's top-k as Detectron2's Base-RCNN-C4.yaml (one level, so per image).
    "maskrcnn_resnet50_c4": dict(variant="v1", depth=50, architecture="c4", **_C4_RPN),
    # Detectron2's mask_rcnn_R_50_C4_{1x,3x}.yaml, computed its way: load with maskrcnn.from_detectron2.
    "detectron2_mask_rcnn_R_50_C4": dict(DETECTRON2_OPTIONS, depth=50, architecture="c4", **_C4_RPN),
}


def build_preset(name: str, **overrides) -> MaskRCNN:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return build_model(ModelConfig.from_dict({**PRESETS[name], **overrides}))
