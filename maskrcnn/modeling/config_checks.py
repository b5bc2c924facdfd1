"""Range checks for every `ModelConfig` option, run when a config is made.

A value outside its range (a negative `min_size`, a threshold of 2, a NaN) would otherwise build
a model that fails much later deep inside a resize or NMS, or silently computes something else.
`ModelConfigError.key` names the option, so `maskrcnn train` can say `model.min_size`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

RESNET_DEPTHS = (18, 34, 50, 101, 152)


class ModelConfigError(ValueError):
    """A ModelConfig option out of range or of the wrong type; `key` is the option's name."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key} {reason}")
        self.key = key
        self.reason = reason


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _number(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if open_low else v < low):
            return False
        return high is None or v <= high
    return ok


def _tuple_of(item: Callable[[Any], bool], length: int | None = None) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not isinstance(v, (tuple, list)) or not v or (length is not None and len(v) != length):
            return False
        return all(item(x) for x in v)
    return ok


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


_FRACTION = _number(0.0, 1.0)
_POSITIVE = _number(0.0, open_low=True)
_NON_NEGATIVE = _number(0.0)

# option -> (check, what the value must be)
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "variant": (_one_of("v1", "v2"), "must be 'v1' or 'v2'"),
    "depth": (_one_of(*RESNET_DEPTHS), f"must be one of {', '.join(map(str, RESNET_DEPTHS))}"),
    "base_width": (_int_at_least(1), "must be an integer >= 1"),
    "num_classes": (_int_at_least(1), "must be an integer >= 1 (classes counting the background)"),
    "class_names": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v)),
                    "must be null or a list of strings"),
    "norm_eps": (_NON_NEGATIVE, "must be a finite number >= 0"),
    "trainable_backbone_layers": (lambda v: _is_int(v) and 0 <= v <= 5, "must be an integer in 0..5"),
    "fpn_channels": (_int_at_least(1), "must be an integer >= 1"),
    "min_size": (lambda v: _int_at_least(1)(v) or _tuple_of(_int_at_least(1))(v),
                 "must be a positive integer or a non-empty list of them"),
    "max_size": (_int_at_least(1), "must be an integer >= 1"),
    "image_mean": (_tuple_of(_number(), 3), "must be 3 finite numbers"),
    "image_std": (_tuple_of(_POSITIVE, 3), "must be 3 finite numbers > 0"),
    "anchor_sizes": (_tuple_of(_POSITIVE), "must be a non-empty list of numbers > 0"),
    "aspect_ratios": (_tuple_of(_POSITIVE), "must be a non-empty list of numbers > 0"),
    "rpn_pre_nms_top_n_train": (_int_at_least(1), "must be an integer >= 1"),
    "rpn_pre_nms_top_n_test": (_int_at_least(1), "must be an integer >= 1"),
    "rpn_post_nms_top_n_train": (_int_at_least(1), "must be an integer >= 1"),
    "rpn_post_nms_top_n_test": (_int_at_least(1), "must be an integer >= 1"),
    "rpn_nms_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "rpn_fg_iou_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "rpn_bg_iou_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "rpn_batch_size_per_image": (_int_at_least(1), "must be an integer >= 1"),
    "rpn_positive_fraction": (_FRACTION, "must be a number in [0, 1]"),
    "rpn_score_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "roi_sampling_ratio": (_int_at_least(0), "must be an integer >= 0 (0: adaptive)"),
    "roi_aligned": (_one_of(True, False), "must be true or false"),
    "representation_size": (_int_at_least(1), "must be an integer >= 1"),
    "mask_head_channels": (_int_at_least(1), "must be an integer >= 1"),
    "box_score_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "box_nms_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "box_detections_per_img": (_int_at_least(1), "must be an integer >= 1"),
    "box_fg_iou_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "box_bg_iou_thresh": (_FRACTION, "must be a number in [0, 1]"),
    "box_batch_size_per_image": (_int_at_least(1), "must be an integer >= 1"),
    "box_positive_fraction": (_FRACTION, "must be a number in [0, 1]"),
    "bbox_reg_weights": (_tuple_of(_POSITIVE, 4), "must be 4 finite numbers > 0"),
    "input_format": (_one_of("RGB", "BGR"), "must be 'RGB' or 'BGR'"),
    "pixel_scale": (_POSITIVE, "must be a finite number > 0"),
    "resize": (_one_of("torchvision", "detectron2"), "must be 'torchvision' or 'detectron2'"),
    "stride_in_1x1": (_one_of(True, False), "must be true or false"),
    "anchor_round": (_one_of(True, False), "must be true or false"),
    "anchor_offset": (lambda v: v is None or _is_number(v), "must be null or a finite number"),
    "rpn_min_size": (_NON_NEGATIVE, "must be a finite number >= 0"),
    "rpn_rank_by_logits": (_one_of(True, False), "must be true or false"),
    "roi_level_eps": (_NON_NEGATIVE, "must be a finite number >= 0"),
    "roi_level_eps_in_log": (_one_of(True, False), "must be true or false"),
    "box_min_size": (_NON_NEGATIVE, "must be a finite number >= 0"),
    "background_last": (_one_of(True, False), "must be true or false"),
    "first_label": (_one_of(0, 1), "must be 0 or 1"),
    "clip_output_boxes": (_one_of(True, False), "must be true or false"),
    "mask_paste": (_one_of("torchvision", "detectron2"), "must be 'torchvision' or 'detectron2'"),
    # The paper's variants and the backbone options: their values (and combinations) are
    # checked by build.check_head_switches / _check_backbone_options, with the choices named;
    # here only the type, so that every option has a check.
    "mask_on": (_one_of(True, False), "must be true or false"),
    "roi_extractor": (_is_str, "must be a string"),
    "mask_loss": (_is_str, "must be a string"),
    "class_agnostic_masks": (_one_of(True, False), "must be true or false"),
    "mask_head": (_is_str, "must be a string"),
    "architecture": (_is_str, "must be a string"),
    "groups": (_int_at_least(1), "must be an integer >= 1"),
    "width_per_group": (_int_at_least(1), "must be an integer >= 1"),
    "backbone_norm": (_is_str, "must be a string"),
    "head_norm": (lambda v: v is None or _is_str(v), "must be null or a string"),
    "gn_groups": (_is_int, "must be an integer"),
    # Keypoint R-CNN
    "num_keypoints": (_int_at_least(0), "must be an integer >= 0 (0: no keypoint branch)"),
    "keypoint_head_channels": (_int_at_least(1), "must be an integer >= 1"),
    "keypoint_names": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v)),
                       "must be null or a list of strings"),
    "keypoint_skeleton": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(
                              isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(i) and i >= 1 for i in p)
                              for p in v)),
                          "must be null or a list of [i, j] keypoint pairs (1-based)"),
}


def check_model_config(config: Any) -> None:
    """Raise ModelConfigError for the first option of `config` (a ModelConfig) out of range."""
    for key, (ok, requirement) in CHECKS.items():
        value = getattr(config, key)
        # bool is an int in Python: `_one_of(True, False)` must not accept 0/1, nor `_one_of(0, 1)` True
        wrong_bool = isinstance(value, bool) != (requirement == "must be true or false")
        if wrong_bool or not ok(value):
            raise ModelConfigError(key, f"{requirement}, got {value!r}")
    pairs = (("rpn_bg_iou_thresh", "rpn_fg_iou_thresh"), ("box_bg_iou_thresh", "box_fg_iou_thresh"))
    for low, high in pairs:
        if getattr(config, low) > getattr(config, high):
            raise ModelConfigError(low, f"must be <= {high} ({getattr(config, high)}), got {getattr(config, low)}")


def check_c4_options(config: Any) -> None:
    """The options that have no meaning in a C4 model (`architecture: c4`), refused by name
    rather than ignored. Its RoI head is the ResNet's res5 stage (the backbone's norm) shared by
    the box and mask branches, its mask head a deconv on res5's 7x7 map: roi_extractor,
    mask_loss, class_agnostic_masks and mask_on apply to it as to FPN; these do not."""
    if config.architecture != "c4":
        return
    refused = {
        "variant": (config.variant != "v1", "'v2' builds FPN heads (4 convs + 1 fc box head, norm layers); "
                                           "C4's RoI head is res5: use variant 'v1'"),
        "mask_head": (config.mask_head != "fcn", "'mlp' is an FPN ablation (the paper's Table 2e); C4's mask head "
                                                "is res5's 7x7 map -> deconv: use 'fcn'"),
        "num_keypoints": (config.num_keypoints > 0, "a keypoint branch is built for FPN models only; "
                                                    "use architecture 'fpn'"),
        "head_norm": (config.head_norm not in (None, "none"), "C4's heads are res5 (normalized as the backbone, "
                                                              "backbone_norm) and a deconv, with nothing for "
                                                              "head_norm to apply to: leave it null"),
    }
    for key, (wrong, reason) in refused.items():
        if wrong:
            raise ModelConfigError(key, f"{getattr(config, key)!r} does not apply to architecture 'c4': {reason}")
