"""Load torchvision Mask R-CNN checkpoints (maskrcnn_resnet50_fpn and _v2) into our model, and
its Faster R-CNN ones (fasterrcnn_resnet50_fpn and _v2: the same model without the mask branch)
and its Keypoint R-CNN ones (keypointrcnn_resnet50_fpn, variant="keypoint").

torchvision's module names map one-to-one onto ours; only the names differ. The rules below
also accept the names of older torchvision releases (before Conv2dNormActivation wrapped convs
in Sequentials).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..modeling.build import ModelConfig, build_model
from ..modeling.mask_rcnn import MaskRCNN
from .native import load_checked

# (pattern, replacement) applied in order; the first that matches wins.
_RULES: list[tuple[str, str]] = [
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"backbone.fpn.lateral.\1.conv."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.1\.", r"backbone.fpn.lateral.\1.norm."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.lateral.\1.conv.\2"),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"backbone.fpn.output.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.1\.", r"backbone.fpn.output.\1.norm."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.output.\1.conv.\2"),
    (r"^rpn\.head\.conv\.(\d+)\.0\.", r"rpn.head.conv.\1.conv."),
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.conv.\1"),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fcs.0."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fcs.1."),
    (r"^roi_heads\.box_head\.([0-3])\.0\.", r"roi_heads.box_head.convs.\1.conv."),
    (r"^roi_heads\.box_head\.([0-3])\.1\.", r"roi_heads.box_head.convs.\1.norm."),
    (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fcs.0."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1.conv."),
    (r"^roi_heads\.mask_head\.(\d+)\.1\.", r"roi_heads.mask_head.convs.\1.norm."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", lambda m: f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}.conv."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
    # keypointrcnn: a Sequential of (conv, ReLU) pairs, so the convs are its even entries
    (r"^roi_heads\.keypoint_head\.(\d+)\.", lambda m: f"roi_heads.keypoint_head.convs.{int(m.group(1)) // 2}.conv."),
    (r"^roi_heads\.keypoint_predictor\.kps_score_lowres\.", "roi_heads.keypoint_head.deconv."),
]

# torchvision's KeypointRCNN trains on a random short side from these (eval: the last)
KEYPOINT_MIN_SIZES = (640, 672, 704, 736, 768, 800)
VARIANTS = ("v1", "v2", "keypoint")


def convert_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision key names -> ours. Unknown keys pass through (strict loading reports them)."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _RULES:
            new_key, n = re.subn(pattern, replacement, key)
            if n:
                key = new_key
                break
        converted[key] = value
    return converted


def read_state_dict(source: str | Path | dict) -> dict[str, Tensor]:
    """A state dict from a dict, a .safetensors file, a torch pickle (.pth/.pt), which is
    read with weights_only=True so it cannot run code, or a Detectron2 model zoo .pkl (numpy
    arrays, read by a restricted unpickler that cannot run code either)."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".pkl":
            from .detectron2 import pickle_state_dict, read_detectron2_pickle

            return pickle_state_dict(read_detectron2_pickle(path), str(path))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # corrupt file or a pickle with arbitrary objects
                raise ValueError(f"could not read checkpoint {path} as a weights-only torch file: {e}") from e
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("checkpoint is not a state dict of tensors")
    return state


# from_torchvision's variants: torchvision builder -> (our layout, mask branch)
VARIANTS = {
    "v1": ("v1", True),  # maskrcnn_resnet50_fpn
    "v2": ("v2", True),  # maskrcnn_resnet50_fpn_v2
    "faster": ("v1", False),  # fasterrcnn_resnet50_fpn
    "faster_v2": ("v2", False),  # fasterrcnn_resnet50_fpn_v2
    "keypoint": ("v1", False),  # keypointrcnn_resnet50_fpn: boxes and keypoints
}
KEYPOINT_KEY = "roi_heads.keypoint_predictor.kps_score_lowres.weight"


def torchvision_variant(state_dict: dict[str, Tensor]) -> str:
    """The `from_torchvision` variant a torchvision state dict's keys show."""
    if KEYPOINT_KEY in state_dict:
        return "keypoint"
    v2 = any(k.startswith("roi_heads.box_head.0.") for k in state_dict)
    masks = any(k.startswith("roi_heads.mask_") for k in state_dict)
    return ("v2" if v2 else "v1") if masks else ("faster_v2" if v2 else "faster")


def imagenet_backbone_state_dict(state_dict: dict[str, Tensor], *, c4: bool = False) -> dict[str, Tensor]:
    """A torchvision ImageNet classifier's ResNet / ResNeXt keys (conv1.*, layer1.* .. layer4.*,
    fc.*) -> our backbone's: backbone.body.*, the classifier (fc) dropped. In a C4 model
    (`c4`) the res5 stage is the RoI head, so layer4.* goes to roi_heads.res5.*."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        if c4 and key.startswith("layer4."):
            out["roi_heads.res5." + key[len("layer4."):]] = value
        else:
            out["backbone.body." + key] = value
    return out


def infer_config(state_dict: dict[str, Tensor], variant: str) -> dict:
    """Architecture facts that a torchvision state dict carries: depth, classes, norm eps."""
    if "roi_heads.box_predictor.cls_score.weight" not in state_dict:
        raise ValueError("not a torchvision Mask R-CNN state dict: roi_heads.box_predictor.cls_score.weight is missing")
    found = torchvision_variant(state_dict)
    if (found == "keypoint") != (variant == "keypoint"):
        raise ValueError(f"checkpoint has the {found} layout but variant={variant!r} was asked for")
    if VARIANTS[found][1] != VARIANTS[variant][1]:
        what = "has a mask branch (Mask R-CNN)" if VARIANTS[found][1] else "has no mask branch (Faster R-CNN)"
        raise ValueError(f"checkpoint {what}: load it with variant={found!r}, not {variant!r}")
    layout, mask_on = VARIANTS[variant]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
    if depth is None:
        raise ValueError(f"unsupported backbone: layer3 has {len(blocks)} blocks (ResNet-50 has 6, ResNet-101 has 23)")
    has_v2_box_head = any(k.startswith("roi_heads.box_head.0.") for k in state_dict)
    if has_v2_box_head != (layout == "v2"):
        found = "v2" if has_v2_box_head else "v1"
        raise ValueError(f"checkpoint has the {found} layout but variant={variant!r} was asked for")
    # Published v1 weights come from FrozenBatchNorm2d models (no step counters), which
    # torchvision runs with eps 0.0; BatchNorm2d-trained weights (v2, fresh models) use 1e-5.
    frozen = not any(k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in state_dict)
    config = {
        "variant": layout,
        "mask_on": mask_on,
        "depth": depth,
        "num_classes": state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0],
        "norm_eps": 0.0 if (frozen and layout == "v1") else 1e-5,
    }
    if variant == "keypoint":
        # a box + keypoint model: no mask branch; ConvTranspose2d weights are (in, out, k, k)
        config.update(mask_on=False, num_keypoints=state_dict[KEYPOINT_KEY].shape[1], min_size=KEYPOINT_MIN_SIZES)
    return config


def from_torchvision(state_dict_or_path: str | Path | dict, variant: str = "v1", **options) -> MaskRCNN:
    """Build our model from a torchvision Mask R-CNN checkpoint, in eval mode.

    variant: "v1" (maskrcnn_resnet50_fpn), "v2" (maskrcnn_resnet50_fpn_v2), "faster"
    (fasterrcnn_resnet50_fpn: no mask branch, detections without masks), "faster_v2"
    (fasterrcnn_resnet50_fpn_v2) or "keypoint" (keypointrcnn_resnet50_fpn: boxes and
    keypoints, no masks; its multi-scale training sizes 640..800).

    options: torchvision's keyword names (box_score_thresh, box_nms_thresh,
    box_detections_per_img, min_size, max_size, rpn_pre_nms_top_n_test, ...) and `norm_eps`
    (default: 0.0 for published v1 weights, which have no num_batches_tracked, else 1e-5).

    >>> model = from_torchvision("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")  # doctest: +SKIP
    >>> det = model([image]).detections[0]   # image: (3, H, W) float in [0, 1]  # doctest: +SKIP
    >>> det.boxes, det.labels, det.scores, det.masks  # doctest: +SKIP
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    state = read_state_dict(state_dict_or_path)
    config = infer_config(state, variant)
    if "num_classes" in options and options["num_classes"] != config["num_classes"]:
        raise ValueError(f"num_classes={options['num_classes']} but the checkpoint has {config['num_classes']} classes")
    config.update(options)
    model = build_model(ModelConfig.from_dict(config))
    source = "checkpoint" if isinstance(state_dict_or_path, dict) else str(state_dict_or_path)
    load_checked(model, convert_state_dict(state), f"{source} ({variant} torchvision layout)")
    return model.eval()
