"""Mask pasting (28x28 mask -> full image) and mask targets (full-image mask -> 28x28)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .roi_align import roi_align


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


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Paste (R, M, M) mask probabilities into (R, H, W) images, inside their (R, 4) boxes.

    torchvision's rule: pad the mask by `padding` cells, grow the box about its center by the same
    factor (M + 2 * padding) / M, truncate its corners to integers (x0, y0, x1, y1), and resize
    the mask bilinearly (align_corners=False) onto the (y1 - y0 + 1) x (x1 - x0 + 1) pixels from
    (x0, y0), clipped to the image. Done for all masks at once as two small matrix products per
    mask (the resize is separable).
    """
    height, width = image_size
    num, m = masks.shape[0], masks.shape[-1]
    if num == 0:
        return masks.new_zeros((0, height, width))
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
    wy = _resize_weights(y0, box_h, m + 2 * padding, height, weight_dtype).to(masks.dtype)  # (R, H, M+2)
    wx = _resize_weights(x0, box_w, m + 2 * padding, width, weight_dtype).to(masks.dtype)  # (R, W, M+2)
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2))


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Crop each RoI's matched ground-truth mask (G, H, W) to its (R, 4) box and resize to
    (R, size, size) with RoIAlign (adaptive sampling), giving soft targets in [0, 1]."""
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)
    return roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, sampling_ratio=0)[:, 0]
