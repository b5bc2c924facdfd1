"""Training augmentations that move the image, boxes and masks together.

Every transform is a callable `(image, target) -> (image, target)`:
    image: float32 (3, H, W); target: the dict `CocoDataset` yields (`boxes` float32 (N, 4) xyxy
    pixels, `masks` uint8 (N, H, W), ...). Keys a transform does not touch pass through, and
    `orig_size` keeps the size before any transform. Inputs are never modified in place.

Randomness comes only from torch's global RNG (`torch.rand`, `torch.randint`), so restoring
torch's RNG state on resume replays exactly the same augmentations.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.keypoints import flip_keypoints

__all__ = ["Compose", "RandomHorizontalFlip", "ResizeShortestEdge", "hflip", "resize"]

Target = dict[str, Any]


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror left-right. A box [x1, x2) over pixel columns becomes [W - x2, W - x1), the same
    pixel-edge convention as the masks, so the flipped mask's box equals the flipped box.
    Keypoints: x -> W - x, and left and right swap by the target's `keypoint_flip`."""
    width = image.shape[-1]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, 0] = width - target["boxes"][:, 2]
        boxes[:, 2] = width - target["boxes"][:, 0]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        if "keypoint_flip" not in target:
            raise ValueError("the target has keypoints but no 'keypoint_flip' (which keypoint each becomes "
                             "when mirrored, e.g. left_eye <-> right_eye); CocoDataset adds it")
        target["keypoints"] = flip_keypoints(target["keypoints"], width, target["keypoint_flip"].tolist())
    return image.flip(-1), target


def resize(image: Tensor, target: Target, size: tuple[int, int]) -> tuple[Tensor, Target]:
    """Resize to `size` = (H', W'): image bilinear, masks nearest, boxes scaled per axis.

    Masks use 'nearest-exact' (pixel-centre sampling), which is aligned with bilinear
    `align_corners=False`; plain 'nearest' shifts masks by up to half a source pixel.
    """
    height, width = image.shape[-2:]
    new_h, new_w = size
    if (new_h, new_w) == (height, width):
        return image, dict(target)
    # antialias when shrinking, otherwise thin structures alias into speckle
    image = F.interpolate(
        image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
        antialias=new_h < height or new_w < width,
    )[0]
    target = dict(target)
    if "boxes" in target:
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=target["boxes"].dtype)
        target["boxes"] = target["boxes"] * scale
    if "keypoints" in target:
        scale = torch.tensor([new_w / width, new_h / height, 1.0], dtype=target["keypoints"].dtype)
        target["keypoints"] = target["keypoints"] * scale
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] == 0:
            target["masks"] = masks.new_zeros((0, new_h, new_w))
        else:
            # (N, H, W) -> (1, N, H, W) -> (1, N, H', W') -> (N, H', W')
            target["masks"] = F.interpolate(masks[None], size=(new_h, new_w), mode="nearest-exact")[0]
    return image, target


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Target], tuple[Tensor, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        # Draw even when p is 0 or 1, so the RNG stream does not depend on p.
        if torch.rand(()).item() < self.p:
            return hflip(image, target)
        return image, dict(target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ResizeShortestEdge:
    """Multi-scale resize: pick a short-side length from `min_sizes` uniformly per sample, scale
    so the short side has that length, but shrink further if the long side would exceed
    `max_size` (Detectron2's rule, the paper's 800/1333 by default).

    Output size: round(H * s), round(W * s) with s = min(m / min(H, W), max_size / max(H, W)).
    """

    def __init__(self, min_sizes: int | Sequence[int] = (800,), max_size: int = 1333) -> None:
        self.min_sizes = (min_sizes,) if isinstance(min_sizes, int) else tuple(int(s) for s in min_sizes)
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"sizes must be positive, got min_sizes={min_sizes}, max_size={max_size}")
        self.max_size = int(max_size)

    def get_size(self, height: int, width: int, min_size: int) -> tuple[int, int]:
        scale = min(min_size / min(height, width), self.max_size / max(height, width))
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        k = int(torch.randint(len(self.min_sizes), ()).item())
        height, width = image.shape[-2:]
        return resize(image, target, self.get_size(height, width, self.min_sizes[k]))

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(min_sizes={self.min_sizes}, max_size={self.max_size})"
