"""Multi-scale RoIAlign: pool each box from the FPN level that matches its size."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .roi_align import restore_order, roi_align


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    eps_in_log: bool = False,
) -> Tensor:
    """FPN paper eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)), clamped to [min_level, max_level].

    Returns int64 (R,) offsets k - min_level. `eps` is added after the log (torchvision's
    rule, 1e-6); Detectron2 adds 1e-8 inside it instead (`eps_in_log`), which only matters
    near exact powers of two.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scale = torch.sqrt(area)
    if eps_in_log:
        levels = torch.floor(canonical_level + torch.log2(scale / canonical_size + eps))
    else:
        levels = torch.floor(canonical_level + torch.log2(scale / canonical_size) + torch.tensor(eps, dtype=scale.dtype))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image (Ri, 4) boxes -> (sum Ri, 5) rois with the image index in column 0."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([index, torch.cat(boxes, dim=0)], dim=1)


class MultiScaleRoIAlign(nn.Module):
    """Pools a fixed-size feature for every box from a list of feature maps.

    The maps' strides are given up front (a backbone fact), never inferred from a batch.
    forward(features (N, C, Hl, Wl) per level, boxes per image (Ri, 4) in padded-input pixels)
        -> (sum Ri, C, output_size, output_size), in the order of the concatenated boxes.
    Only the first len(strides) levels are pooled from (FPN's P6 feeds the RPN alone).
    `roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)` is an
    attribute, so an export can swap in its own operator.
    """

    def __init__(
        self,
        *,
        strides: list[int],
        output_size: int,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        level_eps: float = 1e-6,
        level_eps_in_log: bool = False,
        roi_align=roi_align,
    ):
        super().__init__()
        self.roi_align = roi_align
        self.strides = list(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.level_eps = level_eps
        self.level_eps_in_log = level_eps_in_log
        self.min_level = int(round(math.log2(self.strides[0])))
        self.max_level = int(round(math.log2(self.strides[-1])))

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        features = features[: len(self.strides)]
        rois = boxes_to_rois(boxes).to(features[0].device, features[0].dtype)
        if len(features) == 1:
            return self.roi_align(features[0], rois, self.output_size, 1.0 / self.strides[0],
                             self.sampling_ratio, self.aligned)
        levels = assign_fpn_levels(rois[:, 1:], self.min_level, self.max_level,
                                   self.canonical_size, self.canonical_level, self.level_eps,
                                   self.level_eps_in_log)
        selected, pooled = [], []
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            selected.append(idx)
            pooled.append(self.roi_align(feature, rois[idx], self.output_size, 1.0 / stride,
                                    self.sampling_ratio, self.aligned))
        return restore_order(pooled, selected)
