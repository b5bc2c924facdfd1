"""Plain data types passed between the stages of the model.

Shape shorthand used across the package:
    N: images in a batch, R: regions (proposals or detections), C: channels,
    K: classes including background (index 0), M: mask resolution (28).
Boxes are always (x1, y1, x2, y2) in pixels, float.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ImageList:
    """A padded batch: `tensor` is (N, 3, H, W); `image_sizes[i]` is (h, w) of image i before padding."""

    tensor: Tensor
    image_sizes: list[tuple[int, int]]


@dataclass
class Detections:
    """Detections of one image, in the original image's pixel coordinates.

    boxes: float (R, 4) xyxy; scores: float (R,); labels: int64 (R,), 1..K-1 (0 is background);
    masks: float (R, H, W) pasted probabilities at the original size; (R, 28, 28) when the
    model was called with paste_masks=False; None when the model has no mask branch.
    keypoints: float (R, P, 3) (x, y, 1) in pixels, keypoint_scores: float (R, P) (heatmap
    logits at the keypoint; higher is surer), P keypoints; None without a keypoint branch.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None
    keypoints: Tensor | None = None
    keypoint_scores: Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, key: str) -> Tensor | None:
        # dict-style access, so code written for torchvision's result dicts keeps working
        if key not in ("boxes", "scores", "labels", "masks", "keypoints", "keypoint_scores"):
            raise KeyError(key)
        return getattr(self, key)

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            None if self.masks is None else self.masks.to(device),
            None if self.keypoints is None else self.keypoints.to(device),
            None if self.keypoint_scores is None else self.keypoint_scores.to(device),
        )


@dataclass
class MaskRCNNOutput:
    """What `MaskRCNN.forward` returns, in training and in eval mode alike.

    losses: the five torchvision loss terms when targets were given, else empty.
    detections: one `Detections` per image when detections were asked for, else None.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    detections: list[Detections] | None = None
