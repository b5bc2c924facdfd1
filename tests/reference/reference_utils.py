"""Shared pieces of the reference suite: torchvision's models and ours on the same weights."""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models import detection as tv_detection  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402

from testing_utils import parity_keys  # noqa: E402

TV_BUILDERS = {"v1": tv_detection.maskrcnn_resnet50_fpn, "v2": tv_detection.maskrcnn_resnet50_fpn_v2}


@functools.lru_cache(maxsize=None)
def recipe_state_dict(variant: str) -> dict:
    """The parity fixtures' seeded weights (torchvision's key names)."""
    return seeded_state_dict(parity_keys(variant))


def torchvision_model(variant: str, **options) -> torch.nn.Module:
    """torchvision's own Mask R-CNN with the recipe weights, in eval mode."""
    model = TV_BUILDERS[variant](weights=None, weights_backbone=None, num_classes=91, **options)
    model.load_state_dict(recipe_state_dict(variant), strict=True)
    return model.eval()


def our_model(variant: str, **options) -> torch.nn.Module:
    """Ours on the same state dict. The recipe's v1 has BatchNorm2d statistics (eps 1e-5)."""
    return maskrcnn.from_torchvision(recipe_state_dict(variant), variant, **options).eval()


# ---------------------------------------------------------------------------------------------
# Whole-model comparisons: inputs, one run with its intermediate outputs, detection matching
# ---------------------------------------------------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from testing_utils import load_coffee  # noqa: E402


@functools.lru_cache(maxsize=1)
def _coffee() -> torch.Tensor:
    return load_coffee()


def coffee_image(height: int, width: int, seed: int = 0, noise: float = 0.02) -> torch.Tensor:
    """(3, height, width) float in [0, 1]: coffee.png (400 x 600) cropped to the target aspect
    at a seeded offset, mirrored on odd seeds, resized bilinearly (antialiased when shrinking),
    plus seeded Gaussian noise. A real photograph gives the detector real structure to respond
    to; the noise makes every size a different input."""
    g = torch.Generator().manual_seed(seed)
    coffee = _coffee()
    src_h, src_w = coffee.shape[-2:]
    crop_h = max(1, min(src_h, round(src_w * height / width)))
    crop_w = max(1, min(src_w, round(src_h * width / height)))
    top = int(torch.randint(src_h - crop_h + 1, (), generator=g))
    left = int(torch.randint(src_w - crop_w + 1, (), generator=g))
    crop = coffee[:, top:top + crop_h, left:left + crop_w]
    if seed % 2:
        crop = crop.flip(-1)
    shrink = height < crop_h or width < crop_w
    image = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)[0]
    return (image + noise * torch.randn(image.shape, generator=g)).clamp_(0, 1)


@dataclass
class Run:
    """One forward pass: what the transform and the RPN handed on, and the detections
    (boxes, scores, labels, masks (R, H, W) pasted at the original size) per image."""

    image_sizes: list[tuple[int, int]]
    batch_shape: tuple[int, ...]
    proposals: list[torch.Tensor]
    detections: list[dict[str, torch.Tensor]]
    # torchvision's runs only: its RoI heads' (R, 28, 28) mask probabilities per image, the
    # masks before pasting (the RoI heads' output, same order as `detections`)
    masks28: list[torch.Tensor] | None = None


def run_model(model: torch.nn.Module, images: list[torch.Tensor]) -> Run:
    """model(images) under no_grad, for torchvision's model and ours alike, with forward hooks
    on `model.transform` (-> (ImageList, targets)) and `model.rpn` (-> (proposals, losses))."""
    seen = {}
    hooks = [
        model.transform.register_forward_hook(lambda m, i, out: seen.__setitem__("images", out[0])),
        model.rpn.register_forward_hook(lambda m, i, out: seen.__setitem__("proposals", out[0])),
    ]
    if isinstance(model, tv_detection.generalized_rcnn.GeneralizedRCNN):
        # (result, losses); postprocess pastes result[i]["masks"] afterwards, hence the clone
        hooks.append(model.roi_heads.register_forward_hook(
            lambda m, i, out: seen.__setitem__("masks28", [r["masks"][:, 0].clone() for r in out[0]])))
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        for h in hooks:
            h.remove()
    if hasattr(out, "detections"):  # ours: a MaskRCNNOutput of Detections
        dets = [dict(boxes=d.boxes, scores=d.scores, labels=d.labels, masks=d.masks) for d in out.detections]
    else:  # torchvision: dicts, masks (R, 1, H, W)
        dets = [dict(d, masks=d["masks"][:, 0]) for d in out]
    image_list = seen["images"]
    batch = image_list.tensor if hasattr(image_list, "tensor") else image_list.tensors  # torchvision: .tensors
    return Run(
        image_sizes=[(int(h), int(w)) for h, w in image_list.image_sizes],
        batch_shape=tuple(batch.shape),
        proposals=[p.detach() for p in seen["proposals"]],
        detections=dets,
        masks28=seen.get("masks28"),
    )


def paste_boxes(boxes: torch.Tensor, mask_size: int = 28, padding: int = 1) -> torch.Tensor:
    """The integer pixel box torchvision pastes a mask into (its expand_boxes, then the
    truncating .to(int64)): a box corner that moves across an integer moves the pasted mask."""
    scale = (mask_size + 2 * padding) / mask_size
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)


def pair_detections(ref: dict, ours: dict, min_iou: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference indices, our indices) of the detections that have a counterpart: the same
    label and the highest IoU, above `min_iou`.

    Not by index: adjacent scores can differ by float rounding only, and then their order may
    swap. The pairing is unique: after per-class NMS at 0.5 no two detections of one class have
    IoU > 0.5, and since 1 - IoU is a metric, two of ours with IoU > 0.75 to one reference box
    would have IoU > 0.5 with each other."""
    from maskrcnn.ops import box_iou

    none = torch.zeros(0, dtype=torch.int64)
    if len(ref["boxes"]) == 0 or len(ours["boxes"]) == 0:
        return none, none
    iou = box_iou(ref["boxes"], ours["boxes"])
    iou[ref["labels"][:, None] != ours["labels"][None, :]] = -1
    best = iou.max(dim=1)
    ref_idx = torch.nonzero(best.values > min_iou).flatten()
    our_idx = best.indices[ref_idx]
    assert our_idx.unique().numel() == our_idx.numel(), "two reference detections matched one of ours"
    return ref_idx, our_idx


def match_detections(ref: dict, ours: dict, min_iou: float = 0.75) -> torch.Tensor:
    """Index into `ours` of each reference detection (see pair_detections); all must match."""
    ref_idx, our_idx = pair_detections(ref, ours, min_iou)
    assert len(ref_idx) == len(ref["boxes"]), (
        f"reference detections without a counterpart (label and IoU > {min_iou}): "
        f"{sorted(set(range(len(ref['boxes']))) - set(ref_idx.tolist()))}")
    return our_idx


@dataclass
class Maxima:
    """Largest differences seen so far, each with the case where it occurred; and counts of
    events (with their cases)."""

    values: dict[str, tuple[float, str]] = field(default_factory=dict)
    events: dict[str, list[str]] = field(default_factory=dict)

    def update(self, name: str, value: float, case: str) -> None:
        if name not in self.values or value > self.values[name][0]:
            self.values[name] = (float(value), case)

    def count(self, name: str, case: str) -> None:
        self.events.setdefault(name, []).append(case)

    def lines(self) -> list[str]:
        lines = [f"  {name:<34} {value:.3g}   ({case})" for name, (value, case) in sorted(self.values.items())]
        for name, cases in sorted(self.events.items()):
            lines.append(f"  {name:<34} {len(cases)}x   ({'; '.join(cases)})")
        return lines


# RPN proposals are compared as sets: every coordinate within PROPOSAL_ATOL px, and at least
# PROPOSAL_FRACTION of each side's proposals with such a counterpart on the other (objectness
# logits one float32 rounding apart can swap places at a top-k or NMS cut).
PROPOSAL_ATOL = 0.05
PROPOSAL_FRACTION = 0.995


def proposals_nearest(ref: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """For each reference proposal, the distance (max over the 4 coordinates, px) to the
    nearest of ours."""
    if ours.shape[0] == 0:
        return torch.full((ref.shape[0],), float("inf"))
    return torch.cat([(chunk[:, None, :] - ours[None]).abs().amax(dim=2).amin(dim=1) for chunk in ref.split(500)])


def write_summary(config, title: str, maxima: Maxima) -> None:
    """Print the maxima on the terminal at a module's end, past pytest's output capture (a
    fixture's teardown output is otherwise shown only when its test fails)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or not (maxima.values or maxima.events):
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(title)
        for line in maxima.lines():
            reporter.write_line(line)
