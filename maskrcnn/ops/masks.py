"""Mask pasting (28x28 mask -> full image) and mask targets (full-image mask -> 28x28).

Both touch one full-image plane per instance. Done for all instances at once, memory grows with
instances x image size (3,000 instances on a 512 px image: 3 GB of float32 targets; 20 masks
pasted on a 50 MP image: 4 GB), so they work through the planes in chunks of at most
`CHUNK_BYTES` of float32, which gives the same numbers: each plane is computed on its own.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .roi_align import roi_align

CHUNK_BYTES = 256 * 2**20  # float32 working planes per chunk


def chunk_ranges(count: int, plane_elements: int, budget_bytes: int | None = None) -> Iterator[slice]:
    """Slices over `count` planes of `plane_elements` float32 each, at most `budget_bytes`
    (default: CHUNK_BYTES, read at each call so tests can shrink it) per slice, at least one plane."""
    budget = CHUNK_BYTES if budget_bytes is None else budget_bytes
    step = max(1, budget // max(1, 4 * plane_elements))
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


def _resize_weights(dst_start: Tensor, dst_len: Tensor, src_len: int, size: int,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Bilinear weights that resize a length-`src_len` signal to `dst_len` output pixels placed
    at image positions dst_start .. dst_start + dst_len - 1 of a length-`size` axis, exactly as
    `F.interpolate(mode='bilinear', align_corners=False)` computes them; 0 outside.

    dst_start, dst_len: int64 (R,). Returns (R, size, src_len) in `dtype`, the precision the
    weights are computed in (interpolate's: float64 for float64 masks, float32 otherwise).
    """
    pos = torch.arange(size, device=dst_start.device)
    d = pos[None, :] - dst_start[:, None]  # destination index inside the resized patch
    inside = (d >= 0) & (d < dst_len[:, None])
    scale = torch.full_like(dst_len, src_len, dtype=dtype) / dst_len.to(dtype)
    src = (scale[:, None] * (d.to(dtype) + 0.5) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=src_len - 1)
    hi = (lo + 1).clamp(max=src_len - 1)
    frac = src - lo.to(dtype)
    weights = torch.zeros((dst_start.shape[0], size, src_len), dtype=dtype, device=dst_start.device)
    weights.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, hi[..., None], frac[..., None])
    return weights * inside[..., None]


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1,
                threshold: float | None = None) -> Tensor:
    """Paste (R, M, M) mask probabilities into (R, H, W) images, inside their (R, 4) boxes.

    torchvision's rule: pad the mask by `padding` cells, grow the box about its center by the same
    factor (M + 2 * padding) / M, truncate its corners to integers (x0, y0, x1, y1), and resize
    the mask bilinearly (align_corners=False) onto the (y1 - y0 + 1) x (x1 - x0 + 1) pixels from
    (x0, y0), clipped to the image. Done as two small matrix products per mask (the resize is
    separable), a chunk of masks at a time.

    threshold: None returns the probabilities; a number returns bool `probability >= threshold`,
    thresholded chunk by chunk, so that no (R, H, W) float tensor is ever held (a quarter of
    the memory on large images).
    """
    height, width = image_size
    num, m = masks.shape[0], masks.shape[-1]
    if num == 0:
        return masks.new_zeros((0, height, width), dtype=torch.bool if threshold is not None else masks.dtype)
    masks = F.pad(masks, (padding,) * 4)
    scale = float(m + 2 * padding) / m
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.float32)
    # the box arithmetic stays in the boxes' dtype, as torchvision's, so truncation agrees
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (x_c - w_half).long(), (x_c + w_half).long()  # truncation, as .to(int64)
    y0, y1 = (y_c - h_half).long(), (y_c + h_half).long()
    box_w = (x1 - x0 + 1).clamp(min=1)
    box_h = (y1 - y0 + 1).clamp(min=1)
    # float64 masks get float64 weights, as interpolate computes them: float32 weights were off
    # from torchvision by up to 2e-6 there (the torchvision reference suite found it)
    weight_dtype = torch.float64 if masks.dtype == torch.float64 else torch.float32
    out = masks.new_empty((num, height, width), dtype=torch.bool if threshold is not None else masks.dtype)
    for part in chunk_ranges(num, height * width):
        wy = _resize_weights(y0[part], box_h[part], m + 2 * padding, height, weight_dtype).to(masks.dtype)  # (r, H, M+2)
        wx = _resize_weights(x0[part], box_w[part], m + 2 * padding, width, weight_dtype).to(masks.dtype)  # (r, W, M+2)
        pasted = torch.bmm(torch.bmm(wy, masks[part]), wx.transpose(1, 2))
        out[part] = pasted >= threshold if threshold is not None else pasted
    return out


def paste_masks_detectron2(masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
                           threshold: float | None = None) -> Tensor:
    """Paste (R, M, M) mask probabilities into (R, H, W) images, Detectron2's way (its CPU path,
    `_do_paste_mask` one detection at a time), returning the sampled probabilities; Detectron2's
    binary mask is `probability >= 0.5`.

    Each pixel center (j + 0.5, i + 0.5) is mapped into the box, gx = (j + 0.5 - x1) / (x2 - x1)
    * 2 - 1 in float32, and the mask is sampled there by `grid_sample` (bilinear, zero padding,
    align_corners=False). Only the window of columns max(floor(x1) - 1, 0) .. min(ceil(x2) + 1,
    W) - 1 (rows alike) is sampled; the rest is 0, which is below 0.5 anyway (outside the box a
    pixel gets at most half of the edge cell).

    threshold: as for `paste_masks`, bool `probability >= threshold` instead of probabilities.
    """
    height, width = image_size
    num = masks.shape[0]
    out = masks.new_zeros((num, height, width), dtype=torch.bool if threshold is not None else masks.dtype)
    if num == 0:
        return out
    boxes = boxes.to(torch.float32)
    for i in range(num):
        # A loop over detections, as Detectron2's CPU paste: each samples its own window only.
        x0, y0 = [int(v) for v in torch.clamp(boxes[i, :2].floor() - 1, min=0).tolist()]
        x1 = int(torch.clamp(boxes[i, 2].ceil() + 1, max=width).item())
        y1 = int(torch.clamp(boxes[i, 3].ceil() + 1, max=height).item())
        if x1 <= x0 or y1 <= y0:
            continue
        img_y = torch.arange(y0, y1, device=masks.device, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0, x1, device=masks.device, dtype=torch.float32) + 0.5
        img_y = (img_y - boxes[i, 1]) / (boxes[i, 3] - boxes[i, 1]) * 2 - 1
        img_x = (img_x - boxes[i, 0]) / (boxes[i, 2] - boxes[i, 0]) * 2 - 1
        # (h,) and (w,) -> grid (1, h, w, 2) of (x, y)
        grid = torch.stack(torch.broadcast_tensors(img_x[None, :], img_y[:, None]), dim=-1)[None]
        sampled = F.grid_sample(masks[i][None, None], grid.to(masks.dtype), align_corners=False)
        out[i, y0:y1, x0:x1] = sampled[0, 0] >= threshold if threshold is not None else sampled[0, 0]
    return out


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Crop each RoI's matched ground-truth mask (G, H, W) to its (R, 4) box and resize to
    (R, size, size) with RoIAlign (adaptive sampling), giving soft targets in [0, 1].

    Only the masks some RoI matched are converted to float, a chunk at a time: an image with
    thousands of instances would otherwise need G x H x W floats (3 GB for 3,000 at 512 px)."""
    out = boxes.new_empty((boxes.shape[0], size, size))
    if boxes.shape[0] == 0:
        return out
    used, roi_gt = torch.unique(matched_idxs, return_inverse=True)  # roi_gt: index into `used`
    plane = gt_masks.shape[-2] * gt_masks.shape[-1]
    for part in chunk_ranges(used.numel(), plane):
        in_part = (roi_gt >= part.start) & (roi_gt < part.stop)
        rois = torch.cat([(roi_gt[in_part] - part.start)[:, None].to(boxes), boxes[in_part]], dim=1)
        planes = gt_masks[used[part]][:, None].to(boxes.dtype)
        out[in_part] = roi_align(planes, rois, size, 1.0, sampling_ratio=0)[:, 0]
    return out
