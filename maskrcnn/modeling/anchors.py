"""Anchor boxes: one set of cell anchors per FPN level, repeated over the level's grid.

Anchors are ordered (y, x, anchor) per level, matching the head's (A, H, W) outputs after the
permute in `rpn.flatten_head_outputs`. Two conventions:

    torchvision (round_anchors=True, offset=None): cell anchors computed in float32 and rounded to
        integers; the grid step is padded size // level size, from 0.
    Detectron2 (round_anchors=False, offset=0.0): cell anchors w = sqrt(s^2 / a), h = a * w in
        double precision, not rounded; the grid step is the level's stride, from offset * stride.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cell_anchors(size: float, aspect_ratios: tuple[float, ...], round_anchors: bool = True) -> Tensor:
    """(A, 4) anchors centered at 0 with area size^2 and h/w = ratio: torchvision's float32
    arithmetic, rounded; or, unrounded, Detectron2's (double precision, stored as float32)."""
    if not round_anchors:
        cells = []
        for ratio in aspect_ratios:
            w = math.sqrt(size**2.0 / ratio)
            h = ratio * w
            cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(cells, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = w_ratios * size
    hs = h_ratios * size
    anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return anchors.round() if round_anchors else anchors


class AnchorGenerator(nn.Module):
    """forward(padded batch size (H, W), feature sizes [(Hl, Wl)]) -> list of (Hl*Wl*A, 4) per level.

    `sizes` has one entry per level: a number, or a tuple of sizes that all sit on that level
    (the C4 model: ((32, 64, 128, 256, 512),) gives 15 anchors per location on one map),
    ordered size-major (all ratios of the first size, then the next: Detectron2's order).

    The grid step of a level is H // Hl (and W // Wl), as in torchvision. It equals the level's
    stride except on P6 when H / 32 is odd (e.g. 800 // 13 = 61): published weights were trained
    with that step, so it is kept. With `offset` set (Detectron2), the step is the level's
    declared stride (`strides`) and the grid starts at offset * stride.
    """

    def __init__(
        self,
        *,
        sizes: tuple[float | tuple[float, ...], ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        round_anchors: bool = True,
        offset: float | None = None,
        strides: tuple[int, ...] = (4, 8, 16, 32, 64),
    ):
        super().__init__()
        self.offset = offset
        self.strides = tuple(strides)
        self.sizes = tuple(sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        level_sizes = [tuple(s) if isinstance(s, (tuple, list)) else (s,) for s in self.sizes]
        if len({len(s) for s in level_sizes}) > 1:
            raise ValueError(f"every level needs the same number of anchor sizes (one RPN head), got {self.sizes}")
        self.num_anchors_per_location = len(level_sizes[0]) * len(self.aspect_ratios)
        for i, sizes_i in enumerate(level_sizes):
            cell = torch.cat([cell_anchors(size, self.aspect_ratios, round_anchors) for size in sizes_i])
            self.register_buffer(f"cell_{i}", cell, persistent=False)

    def forward(self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]]) -> list[Tensor]:
        anchors = []
        for i, (h, w) in enumerate(feature_sizes):
            cell = getattr(self, f"cell_{i}")
            if self.offset is None:
                shifts_x = torch.arange(w, device=cell.device, dtype=torch.int32) * (image_size[1] // w)
                shifts_y = torch.arange(h, device=cell.device, dtype=torch.int32) * (image_size[0] // h)
            else:
                # (i + offset) * stride, exact in double, stored as float32 (Detectron2's arange)
                start = self.offset * self.strides[i]
                shifts_x = (torch.arange(w, device=cell.device, dtype=torch.float64) * self.strides[i] + start).float()
                shifts_y = (torch.arange(h, device=cell.device, dtype=torch.float64) * self.strides[i] + start).float()
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            anchors.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        return anchors
