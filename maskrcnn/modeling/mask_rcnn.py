"""Mask R-CNN (He et al. 2017): backbone + FPN -> RPN -> RoI heads (box and mask branches).

    model = MaskRCNN(transform=..., backbone=..., rpn=..., roi_heads=...)
    out = model(images)                  # eval: out.detections, one Detections per image
    out = model(images, targets)         # out.losses: the five torchvision loss terms
    out = model(images, targets, detections=True)   # both, e.g. for a validation pass

    # the same inference, step by step (what forward does; `run` = `propose` + RoI heads):
    batch, _ = model.preprocess(images)            # ImageList: padded (N, 3, H, W) + sizes
    dets = model.detect(batch)                     # Detections in resized coordinates
    dets = model.postprocess(dets, batch.image_sizes, [img.shape[-2:] for img in images])

images: list of (3, Hi, Wi) float tensors in [0, 1], RGB, any sizes.
targets: one dict per image: "boxes" float (G, 4) xyxy pixels, "labels" int64 (G,) in 1..K-1 (0..K-2 with
first_label=0, Detectron2's class index),
"masks" uint8/bool (G, Hi, Wi) (optional for a model without a mask branch, `mask_on=False`),
optionally "iscrowd" (G,) (crowd regions are ignored).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.boxes import clip_boxes, remove_small_boxes
from ..ops.keypoints import scale_keypoints
from ..ops.masks import paste_masks as paste_masks_in_image
from ..ops.masks import paste_masks_detectron2
from ..structures import Detections, ImageList, MaskRCNNOutput
from .backbone.fpn import ResNetFPN
from .roi_heads.roi_heads import RoIHeads
from .rpn import RPN
from .transform import ImageTransform, scale_boxes

# Ground-truth boxes may stick out of the image by this much (pixels) from rounding in tools.
_BOX_TOLERANCE = 1.0

# `MaskRCNN.precision`: the dtype convolutions and matrix products run in (autocast). Whatever
# it is, head outputs come back as float32 (`layers.full_precision`) and RoIAlign samples in
# float32, so box decoding, NMS, RoI coordinates, losses and the paste stay in float32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MaskRCNN(nn.Module):
    def __init__(
        self,
        *,
        transform: ImageTransform,
        backbone: ResNetFPN,
        rpn: RPN,
        roi_heads: RoIHeads,
        num_classes: int,
        class_names: list[str] | None = None,
        first_label: int = 1,
        clip_output_boxes: bool = False,
        mask_paste: str = "torchvision",
    ):
        """first_label: the label of the first class in detections and targets: 1 (0 is the
        background, torchvision) or 0 (Detectron2's class index 0..K-2); inside the heads the
        background is always 0. clip_output_boxes: clip the boxes to the original image after
        the rescale and drop the empty ones (Detectron2). mask_paste: "torchvision" (padded
        mask, interpolate) or "detectron2" (grid_sample at pixel centers, see
        `ops.paste_masks_detectron2`); both give probabilities."""
        super().__init__()
        if first_label not in (0, 1):
            raise ValueError(f"first_label must be 0 or 1, got {first_label}")
        if mask_paste not in ("torchvision", "detectron2"):
            raise ValueError(f"mask_paste must be 'torchvision' or 'detectron2', got {mask_paste!r}")
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes  # including background
        self.class_names = class_names
        self.first_label = first_label
        self.clip_output_boxes = clip_output_boxes
        self.mask_paste = mask_paste
        self.precision = "fp32"

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        detections: bool | None = None,
        paste_masks: bool = True,
        score_thresh: float | None = None,
        mask_threshold: float | None = None,
    ) -> MaskRCNNOutput:
        """`detections` defaults to "not training". `paste_masks=False` leaves masks as 28x28
        probabilities in `Detections.masks`. `score_thresh` overrides the box score threshold
        for this call (a higher one also means fewer masks to compute). `mask_threshold`: pasted
        masks are bool `probability >= mask_threshold` (thresholded while pasting, so a large
        image never holds all its masks as floats); None keeps probabilities."""
        want_detections = (not self.training) if detections is None else detections
        batch, resized_targets = self.preprocess(images, targets)
        results, losses = self.run(batch, resized_targets, detections=want_detections, score_thresh=score_thresh)
        output = MaskRCNNOutput(losses=losses)
        if results is not None:
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            output.detections = self.postprocess(results, batch.image_sizes, original_sizes, paste_masks=paste_masks,
                                                 mask_threshold=mask_threshold)
        return output

    # The three steps of inference, for callers that need them apart (benchmarks, inspect,
    # export): preprocess -> detect (or run, with targets) -> postprocess.

    def preprocess(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Check the inputs, then normalize, resize and pad them into one batch; targets are
        resized alike (never modified in place)."""
        images = check_images(images)
        if targets is not None:
            check_targets(images, targets, self.num_classes, self.first_label,
                          masks=self.roi_heads.has_mask,
                          num_keypoints=self.roi_heads.keypoint_head.num_keypoints if self.roi_heads.has_keypoints else 0)
            if self.first_label != 1:
                # the heads count classes from 1 (0 is their background)
                targets = [{**t, "labels": t["labels"] + (1 - self.first_label)} for t in targets]
        return self.transform(images, targets)

    def run(
        self,
        batch: ImageList,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        detections: bool = True,
        score_thresh: float | None = None,
    ) -> tuple[list[Detections] | None, dict[str, Tensor]]:
        """The network on a padded batch: backbone + FPN -> RPN -> RoI heads.

        Returns detections in the coordinates of the resized images (masks as (D, 28, 28)
        probabilities; None unless `detections`) and the losses (empty unless `targets`, which
        must already be resized by `preprocess`)."""
        with self.autocast(batch.tensor.device):
            features, proposals, rpn_losses = self.propose(batch, targets)
            results, roi_losses = self.roi_heads(
                features, proposals, batch.image_sizes, targets, want_detections=detections, score_thresh=score_thresh
            )
        return results, {**rpn_losses, **roi_losses}

    def autocast(self, device: torch.device):
        """The autocast context `precision` asks for on `device` (disabled for "fp32")."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        dtype = PRECISIONS[self.precision]
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def propose(
        self, batch: ImageList, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """The first stage: FPN levels (P2..P6), RPN proposals per image (resized
        coordinates) and the RPN losses (empty unless `targets`)."""
        features = self.backbone(batch.tensor)
        proposals, losses = self.rpn(batch, features, targets)
        return features, proposals, losses

    def detect(self, batch: ImageList, *, score_thresh: float | None = None) -> list[Detections]:
        """Inference on a padded batch: `run` without targets."""
        return self.run(batch, score_thresh=score_thresh)[0]

    def postprocess(
        self,
        detections: list[Detections],
        resized_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
        *,
        paste_masks: bool = True,
        mask_threshold: float | None = None,
    ) -> list[Detections]:
        """Boxes back to each original image's pixels (clipped, empty ones dropped, if
        `clip_output_boxes`); masks pasted at that size (unless not `paste_masks`: then they
        stay (D, 28, 28) probabilities); labels from `first_label` on."""
        out = []
        for det, resized, original in zip(detections, resized_sizes, original_sizes):
            boxes = scale_boxes(det.boxes, resized, original)
            scores, labels, masks = det.scores, det.labels, det.masks
            keypoints, keypoint_scores = det.keypoints, det.keypoint_scores
            if keypoints is not None:
                keypoints = scale_keypoints(keypoints, resized, original)
            if self.clip_output_boxes:
                boxes = clip_boxes(boxes, original)
                keep = remove_small_boxes(boxes, 0.0)
                if not keep.all():
                    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                    masks = masks[keep] if masks is not None else None
                    if keypoints is not None:
                        keypoints, keypoint_scores = keypoints[keep], keypoint_scores[keep]
            if masks is not None and paste_masks:
                paste = paste_masks_detectron2 if self.mask_paste == "detectron2" else paste_masks_in_image
                masks = paste(masks, boxes, original, threshold=mask_threshold)
            if self.first_label != 1:
                labels = labels - (1 - self.first_label)
            out.append(Detections(boxes=boxes, scores=scores, labels=labels, masks=masks,
                                  keypoints=keypoints, keypoint_scores=keypoint_scores))
        return out


def check_images(images: list[Tensor]) -> list[Tensor]:
    """Clear errors for the usual mistakes, before they surface deep inside a conv."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a list of (3, H, W) tensors, got one tensor of shape {tuple(images.shape)}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("images is empty: pass a list of (3, H, W) float tensors")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a torch.Tensor (3, H, W)")
        if image.dim() != 3:
            raise ValueError(f"image {i} has shape {tuple(image.shape)}: expected 3 dimensions (3, H, W)")
        if image.shape[0] != 3:
            raise ValueError(f"image {i} has {image.shape[0]} channels (shape {tuple(image.shape)}): expected 3 (RGB, channels first)")
        if not image.is_floating_point():
            raise TypeError(f"image {i} has dtype {image.dtype}: expected a float tensor with values in [0, 1] (divide uint8 by 255)")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"image {i} is empty: shape {tuple(image.shape)}")
    return list(images)


def check_targets(images: list[Tensor], targets: list[dict[str, Tensor]], num_classes: int,
                  first_label: int = 1, *, masks: bool = True, num_keypoints: int = 0) -> None:
    """masks: the model has a mask branch (targets need "masks"; given without one, they are
    still checked); num_keypoints: the keypoint branch's P (targets need "keypoints" (G, P, 3));
    0 without one."""
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    required = ("boxes", "labels") + (("masks",) if masks else ()) + (("keypoints",) if num_keypoints else ())
    for i, (image, target) in enumerate(zip(images, targets)):
        for key in required:
            if key not in target:
                raise ValueError(f"target {i} has no '{key}' (keys: {sorted(target)})")
        boxes, labels = target["boxes"], target["labels"]
        h, w = image.shape[-2:]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"target {i}: boxes must be a float (G, 4) tensor, got {boxes.dtype} {tuple(boxes.shape)}")
        g = boxes.shape[0]
        if labels.shape != (g,) or labels.is_floating_point():
            raise ValueError(f"target {i}: labels must be an int64 ({g},) tensor, got {labels.dtype} {tuple(labels.shape)}")
        if target.get("masks") is not None and target["masks"].shape != (g, h, w):
            raise ValueError(f"target {i}: masks must be ({g}, {h}, {w}) to match the boxes and the image, got {tuple(target['masks'].shape)}")
        if num_keypoints:
            kp = target["keypoints"]
            if kp.shape != (g, num_keypoints, 3) or not kp.is_floating_point():
                raise ValueError(f"target {i}: keypoints must be a float ({g}, {num_keypoints}, 3) tensor "
                                 f"(x, y, visibility per keypoint), got {kp.dtype} {tuple(kp.shape)}")
        if g == 0:
            continue
        if not torch.isfinite(boxes).all():
            raise ValueError(f"target {i}: boxes contain NaN or infinity")
        last = num_classes - 2 + first_label
        bad = torch.nonzero((labels < first_label) | (labels > last)).flatten()
        if bad.numel():
            j = int(bad[0])
            background = " (0 is background)" if first_label == 1 else ""
            raise ValueError(f"target {i}, instance {j}: label {int(labels[j])} is out of range {first_label}..{last}{background}")
        bad = torch.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).flatten()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(f"target {i}, instance {j}: box {boxes[j].tolist()} has zero or negative width or height")
        t = _BOX_TOLERANCE
        outside = (boxes[:, 0] < -t) | (boxes[:, 1] < -t) | (boxes[:, 2] > w + t) | (boxes[:, 3] > h + t)
        bad = torch.nonzero(outside).flatten()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(f"target {i}, instance {j}: box {boxes[j].tolist()} lies outside the {w}x{h} image")
