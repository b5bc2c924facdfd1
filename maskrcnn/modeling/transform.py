"""Input transform: normalize, resize, pad into a batch; and map results back to each image.

Follows torchvision's eager GeneralizedRCNNTransform arithmetic exactly (normalize first, then a
bilinear resize whose scale is min(min_size / short, max_size / long) in Python (double) floats
and whose size is floor(side * scale)), so that published weights see the same pixels they were
trained on. torchvision computes the scale in float32 only when tracing or scripting; that gives
a size one pixel smaller on about half of all image sizes (375x500 -> 799x1066, not 800x1066).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import ImageList

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """Short side to min_size unless the long side would exceed max_size.

    Double-precision arithmetic, as torchvision's eager path and F.interpolate(scale_factor=...,
    recompute_scale_factor=True) do it; an exported graph must use the same (see export)."""
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    # At least one pixel: a 2 x 5000 strip would otherwise resize to 0 rows and fail inside
    # F.interpolate (torchvision fails there too); every size that works is unchanged.
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale (R, 4) boxes between two image sizes (h, w), as float32 ratios."""
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / torch.tensor(from_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / torch.tensor(from_size[1], dtype=torch.float32)
    ratios = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes)
    return boxes * ratios


class ImageTransform(nn.Module):
    """images: list of (3, Hi, Wi) float tensors in [0, 1] -> padded, normalized ImageList.

    Training picks the short side at random from `min_size` (multi-scale); eval uses the last.
    """

    def __init__(
        self,
        *,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        size_divisible: int = 32,
    ):
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible

    def pick_min_size(self) -> int:
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(torch.randint(len(self.min_size), ()).item())]
        return self.min_size[-1]

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized_images, resized_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            image = (image - self.image_mean.to(image)) / self.image_std.to(image)
            h, w = image.shape[-2:]
            new_h, new_w = resized_size(h, w, self.pick_min_size(), self.max_size)
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            resized_images.append(image)
            if targets is not None:
                resized_targets.append(self._resize_target(targets[i], (h, w), (new_h, new_w)))
        return self.batch(resized_images), resized_targets

    @staticmethod
    def _resize_target(target: dict[str, Tensor], old: tuple[int, int], new: tuple[int, int]) -> dict[str, Tensor]:
        target = dict(target)  # never mutate the caller's dict
        target["boxes"] = scale_boxes(target["boxes"], old, new)
        if "masks" in target and target["masks"].shape[0] > 0:
            masks = target["masks"][:, None].float()
            target["masks"] = F.interpolate(masks, size=new, mode="nearest")[:, 0].to(torch.uint8)
        elif "masks" in target:
            target["masks"] = target["masks"].new_zeros((0, *new))
        return target

    def batch(self, images: list[Tensor]) -> ImageList:
        """Zero-pad to a common size that is a multiple of `size_divisible` (bottom/right)."""
        max_h = max(img.shape[-2] for img in images)
        max_w = max(img.shape[-1] for img in images)
        d = self.size_divisible
        max_h, max_w = int(math.ceil(max_h / d) * d), int(math.ceil(max_w / d) * d)
        batched = images[0].new_zeros((len(images), 3, max_h, max_w))
        for img, slot in zip(images, batched):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched, [(int(img.shape[-2]), int(img.shape[-1])) for img in images])
