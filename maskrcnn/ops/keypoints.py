"""Keypoint ops: heatmap training targets, heatmap decoding, and keypoint geometry (resize, flip).

Keypoints are (..., K, 3) float tensors of (x, y, visibility) in pixels; visibility as in COCO:
0 not labelled, 1 labelled but not visible, 2 visible. Only v > 0 counts as a location.
Shape shorthand: R RoIs, K keypoints, S heatmap side (56).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The paper's one-hot targets: for each RoI and keypoint, the index y * S + x of the heatmap
    cell that holds the keypoint, and whether there is one (labelled, inside the RoI).

    keypoints (R, K, 3) (each RoI's matched gt), rois (R, 4) -> (targets (R, K) int64,
    valid (R, K) bool). A keypoint exactly on the RoI's right or bottom edge goes to the last
    cell, as torchvision and Detectron2 do (floor would put it one past the end).
    """
    x0, y0 = rois[:, 0:1], rois[:, 1:2]
    scale_x = size / (rois[:, 2:3] - x0)
    scale_y = size / (rois[:, 3:4] - y0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right = x == rois[:, 2:3]
    on_bottom = y == rois[:, 3:4]
    cx = ((x - x0) * scale_x).floor().long()
    cy = ((y - y0) * scale_y).floor().long()
    cx = torch.where(on_right, torch.full_like(cx, size - 1), cx)
    cy = torch.where(on_bottom, torch.full_like(cy, size - 1), cy)
    valid = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size) & (keypoints[..., 2] > 0)
    targets = torch.where(valid, cy * size + cx, torch.zeros_like(cx))
    return targets, valid


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """Decode (R, K, S, S) heatmap logits into keypoints inside their (R, 4) RoIs, as torchvision
    does: each RoI's maps are resized (bicubic) to the RoI's size in pixels rounded up, the argmax
    cell's centre (Heckbert: c = d + 0.5) is scaled back by size / rounded size and offset by the
    RoI's corner. Scores are the resized logits at the argmax.

    -> (keypoints (R, K, 3) with visibility 1, scores (R, K)). One interpolate per RoI: each has
    its own output size (the sub-pixel precision of the argmax is the point), and a padded batch
    of them would be R x K x the largest RoI's area.
    """
    num_rois, num_keypoints = maps.shape[:2]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    keypoints = maps.new_zeros((num_rois, num_keypoints, 3))
    scores = maps.new_zeros((num_rois, num_keypoints))
    if num_rois == 0:
        return keypoints, scores
    sizes = torch.stack([heights_ceil, widths_ceil], 1).long().tolist()  # one sync for all RoIs
    ks = torch.arange(num_keypoints, device=maps.device)
    for i, (h, w) in enumerate(sizes):
        roi_map = F.interpolate(maps[i][:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0]
        pos = roi_map.reshape(num_keypoints, -1).argmax(dim=1)
        x_int, y_int = pos % w, torch.div(pos, w, rounding_mode="floor")
        keypoints[i, :, 0] = (x_int.float() + 0.5) * (widths[i] / w) + rois[i, 0]
        keypoints[i, :, 1] = (y_int.float() + 0.5) * (heights[i] / h) + rois[i, 1]
        scores[i] = roi_map[ks, y_int, x_int]
    keypoints[:, :, 2] = 1
    return keypoints, scores


def scale_keypoints(keypoints: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale (..., K, 3) keypoints between two image sizes (h, w) with the float32 ratios that
    `scale_boxes` uses; visibility is kept."""
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / torch.tensor(from_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / torch.tensor(from_size[1], dtype=torch.float32)
    ratios = torch.stack((ratio_w, ratio_h, torch.ones(()))).to(keypoints)
    return keypoints * ratios


def flip_indices(names: list[str], flip_map: list[tuple[str, str]] | None = None) -> list[int]:
    """For a horizontal flip: index of the keypoint each keypoint becomes. Pairs come from
    `flip_map` ((name, name) pairs) when given, else from the names: `left_x` <-> `right_x`
    (also `left x`, `leftX`-style prefixes "left"/"right", any case). Unpaired keypoints stay."""
    index = {name: i for i, name in enumerate(names)}
    order = list(range(len(names)))
    if flip_map is not None:
        for a, b in flip_map:
            for name in (a, b):
                if name not in index:
                    raise ValueError(f"flip_map names {name!r}, which is not a keypoint ({', '.join(names)})")
            order[index[a]], order[index[b]] = index[b], index[a]
        return order
    lowered = {name.lower(): i for i, name in enumerate(names)}
    for name, i in lowered.items():
        for side, other in (("left", "right"), ("right", "left")):
            if name.startswith(side):
                j = lowered.get(other + name[len(side):])
                if j is not None:
                    order[i] = j
    return order


def flip_keypoints(keypoints: Tensor, width: int, order: list[int]) -> Tensor:
    """Keypoints (G, K, 3) of an image flipped left-right (width in pixels): x -> width - x and
    left/right swapped by `order` (see `flip_indices`). Pixel coordinates, like boxes: a flip
    maps the pixel edge x to width - x."""
    flipped = keypoints[:, order].clone()
    flipped[..., 0] = torch.where(flipped[..., 2] > 0, width - flipped[..., 0], flipped[..., 0])
    return flipped
