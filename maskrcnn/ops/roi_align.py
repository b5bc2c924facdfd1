"""RoIAlign, RoIPool and RoIWarp in vectorized PyTorch.

RoIAlign averages bilinear samples taken on a regular grid inside each output bin. Every sample
is drawn in one `grid_sample` call, whose 'border' padding reproduces the reference kernel's edge
rule (a point within one cell outside the map reads the edge value) and whose backward gives the
gradient for free. Points further outside contribute 0, as in torchvision's compiled kernels.

Conventions (both supported):
    aligned=False (torchvision, the original Mask R-CNN): box corners are scaled to the feature map
        as they are, and a box is at least 1x1 cell.
    aligned=True (Detectron2 "ROIAlignV2"): 0.5 is subtracted after scaling, so a box is measured
        between pixel centers; no minimum size.
sampling_ratio > 0 takes that many samples per bin side; 0 (or negative) takes
ceil(roi_size / output_size) samples, per RoI, and a RoI for which that is <= 0 (an empty or
inverted box with aligned=True, or a non-finite box) pools to 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Bound on sampling points materialized at once (points x channels), to cap memory.
_MAX_ELEMENTS_PER_CHUNK = 1 << 26


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """features (N, C, H, W); rois (R, 5) as (batch_index, x1, y1, x2, y2) in input pixels.
    Returns (R, C, ph, pw)."""
    ph, pw = _pair(output_size)
    num_rois = rois.shape[0]
    _, channels, height, width = features.shape
    # Sampling positions need float32 at least: in bfloat16 a normalized grid coordinate on a
    # 200-cell map is off by up to a cell. Reduced-precision features (autocast) are sampled in
    # float32 too, and the result is float32 whether or not this call has RoIs, so that the
    # pooler's per-level parts always agree in dtype.
    dtype = torch.promote_types(features.dtype, torch.float32)
    if num_rois == 0:
        return features.new_zeros((0, channels, ph, pw), dtype=dtype)
    features = features.to(dtype)
    rois = rois.to(dtype)

    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio)
        grid_w = torch.full_like(roi_w, sampling_ratio)
    else:
        # Not clamped: an empty or inverted box (possible with aligned=True) gets an empty grid
        # and pools to 0, as in torchvision's kernels. So does a box with a NaN or infinite
        # coordinate (from NaN features upstream) instead of crashing int() below.
        grid_h = torch.ceil(roi_h / ph)
        grid_w = torch.ceil(roi_w / pw)
        finite = torch.isfinite(grid_h) & torch.isfinite(grid_w)
        grid_h = torch.where(finite, grid_h, torch.zeros_like(grid_h))
        grid_w = torch.where(finite, grid_w, torch.zeros_like(grid_w))
    max_grid_h = max(int(grid_h.max()), 1) if sampling_ratio <= 0 else sampling_ratio
    max_grid_w = max(int(grid_w.max()), 1) if sampling_ratio <= 0 else sampling_ratio

    # Sample coordinates along each axis: (R, ph, gh) and (R, pw, gw).
    iy = torch.arange(max_grid_h, device=rois.device, dtype=features.dtype)
    ix = torch.arange(max_grid_w, device=rois.device, dtype=features.dtype)
    bins_y = torch.arange(ph, device=rois.device, dtype=features.dtype)
    bins_x = torch.arange(pw, device=rois.device, dtype=features.dtype)
    # (an empty grid's spacing is irrelevant, its samples are masked out below; keep it finite)
    ys = (y1[:, None, None] + bins_y[None, :, None] * bin_h[:, None, None]
          + (iy[None, None, :] + 0.5) * (bin_h / grid_h.clamp(min=1))[:, None, None])
    xs = (x1[:, None, None] + bins_x[None, :, None] * bin_w[:, None, None]
          + (ix[None, None, :] + 0.5) * (bin_w / grid_w.clamp(min=1))[:, None, None])
    # A sample counts if it lies within [-1, size] and (adaptive grids) exists for this RoI.
    valid_y = (ys >= -1.0) & (ys <= height) & (iy < grid_h[:, None, None])
    valid_x = (xs >= -1.0) & (xs <= width) & (ix < grid_w[:, None, None])
    # Counted samples are clamped onto the map, which is the reference kernel's edge rule (a
    # point within one cell outside reads the edge). The others are moved far outside, where
    # grid_sample's zero padding makes them contribute exactly 0; this also keeps a NaN
    # coordinate away from grid_sample. With align_corners=True, -1 / +1 are the first / last
    # cell centers.
    outside = torch.tensor(-4.0, dtype=features.dtype, device=rois.device)
    gy = torch.where(valid_y, ys.clamp(0, height - 1) / max(height - 1, 1) * 2 - 1, outside)
    gx = torch.where(valid_x, xs.clamp(0, width - 1) / max(width - 1, 1) * 2 - 1, outside)
    # The kernel divides each bin's sum by its grid size (uncounted points included); average
    # pooling divides by the largest grid, so adaptive grids are rescaled.
    rescale = None
    if sampling_ratio <= 0:
        rescale = (max_grid_h * max_grid_w / (grid_h * grid_w).clamp(min=1))[:, None, None, None]

    # With align_corners=True, grid_sample maps every coordinate of a length-1 axis onto its one
    # cell, so the "far outside" value above read it, times the adaptive rescale (on a 1-row
    # map, P5 of a 32-pixel-high batch, a RoI below the map pooled to -13.5 from features in
    # [-1, 1]; torchvision gives 0). Such an axis gets a second cell of zeros, which only those
    # samples reach; the division by max(size - 1, 1) above already normalizes to two cells.
    if height == 1 or width == 1:
        features = F.pad(features, (0, int(width == 1), 0, int(height == 1)))
    # Sampling on channels-last maps reads C contiguous values per point: several times faster.
    features = features.contiguous(memory_format=torch.channels_last)
    batch_index = rois[:, 0].long()
    points_per_roi = ph * max_grid_h * pw * max_grid_w
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // max(1, points_per_roi * channels))
    selected, pooled = [], []
    for image in range(features.shape[0]):
        # A Python loop over images (not boxes): each image's RoIs sample that image's map.
        idx = torch.nonzero(batch_index == image).squeeze(1)
        for start in range(0, idx.numel(), chunk):
            sel = idx[start:start + chunk]
            r = sel.numel()
            # (r, ph, gh) x (r, pw, gw) -> grid (1, r * ph * gh, pw * gw, 2)
            grid = torch.stack(
                (
                    gx[sel][:, None, None, :, :].expand(r, ph, max_grid_h, pw, max_grid_w),
                    gy[sel][:, :, :, None, None].expand(r, ph, max_grid_h, pw, max_grid_w),
                ),
                dim=-1,
            ).reshape(1, r * ph * max_grid_h, pw * max_grid_w, 2)
            samples = F.grid_sample(
                features[image:image + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )  # (1, C, r*ph*gh, pw*gw)
            bins = F.avg_pool2d(samples, (max_grid_h, max_grid_w))  # (1, C, r*ph, pw), channels-last
            # (1, C, r*ph, pw) -> (1, r*ph, pw, C) -> (r, ph, pw, C) -> (r, C, ph, pw): views of
            # the channels-last memory, no copy (the result keeps channels-last strides)
            bins = bins.permute(0, 2, 3, 1).reshape(r, ph, pw, channels).permute(0, 3, 1, 2)
            if rescale is not None:
                bins = bins * rescale[sel]
            selected.append(sel)
            pooled.append(bins)
    return restore_order(pooled, selected)


def restore_order(parts: list[Tensor], indices: list[Tensor]) -> Tensor:
    """Concatenate results computed for subsets of rows (`parts[k]` for rows `indices[k]`, which
    together cover every row once) back into row order: one gather, differentiable."""
    if len(parts) == 1:
        return parts[0]  # a single part covers every row, in order (nonzero is sorted)
    rows = sum(p.shape[0] for p in parts)
    out = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    for part, idx in zip(parts, indices):
        out.index_copy_(0, idx, part)
    return out


def _round_half_away(values: Tensor) -> Tensor:
    """C's round(): to the nearest integer, halves away from zero (2.5 -> 3, -0.5 -> -1), as int64.
    torch.round rounds halves to even, which moves box corners on half-integers. Exact: the
    fractional part v - trunc(v) is computed without rounding error."""
    whole = torch.trunc(values)
    up = (values - whole).abs() >= 0.5
    return torch.where(up, whole + torch.sign(values), whole).long()


def roi_pool(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Max pooling over quantized bins (Fast R-CNN's RoIPool), torchvision's rounding rules: box
    corners scaled and rounded half away from zero, a box at least 1x1 cell (end - start + 1),
    bin b covering cells floor(b * size / n) .. ceil((b + 1) * size / n) - 1, clipped to the map.
    features (N, C, H, W); rois (R, 5) -> (R, C, ph, pw). Empty bins give 0.
    `sampling_ratio` and `aligned` are accepted and ignored (a max over whole cells has no
    sampling points, a quantized box no half-pixel offset), so a `MultiScaleRoIAlign` calls it
    exactly as it calls `roi_align`."""
    ph, pw = _pair(output_size)
    num_rois = rois.shape[0]
    _, channels, height, width = features.shape
    # float32 at least, as in roi_align: box rounding, and one dtype for every pooler level
    dtype = torch.promote_types(features.dtype, torch.float32)
    if num_rois == 0:
        return features.new_zeros((0, channels, ph, pw), dtype=dtype)
    features = features.to(dtype)
    rois = rois.to(dtype)
    start_w = _round_half_away(rois[:, 1] * spatial_scale)
    start_h = _round_half_away(rois[:, 2] * spatial_scale)
    end_w = _round_half_away(rois[:, 3] * spatial_scale)
    end_h = _round_half_away(rois[:, 4] * spatial_scale)
    roi_w = (end_w - start_w + 1).clamp(min=1).to(features.dtype)
    roi_h = (end_h - start_h + 1).clamp(min=1).to(features.dtype)

    def bin_edges(start: Tensor, size: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
        b = torch.arange(bins, device=rois.device, dtype=features.dtype)
        bin_size = size[:, None] / bins
        lo = torch.floor(b[None] * bin_size).long() + start[:, None]
        hi = torch.ceil((b[None] + 1) * bin_size).long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    hs, he = bin_edges(start_h, roi_h, ph, height)  # (R, ph)
    ws, we = bin_edges(start_w, roi_w, pw, width)  # (R, pw)
    kh = max(int((he - hs).max()), 1)
    kw = max(int((we - ws).max()), 1)
    rows = hs[:, :, None] + torch.arange(kh, device=rois.device)  # (R, ph, kh)
    cols = ws[:, :, None] + torch.arange(kw, device=rois.device)  # (R, pw, kw)
    row_ok = rows < he[:, :, None]
    col_ok = cols < we[:, :, None]
    rows = rows.clamp(max=height - 1)
    cols = cols.clamp(max=width - 1)

    batch_index = rois[:, 0].long()
    out = features.new_zeros((num_rois, channels, ph, pw))
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // max(1, channels * ph * kh * pw * kw))
    for start in range(0, num_rois, chunk):
        s = slice(start, start + chunk)
        # (r, C, ph, pw, kh, kw) gather of every cell of every bin
        vals = features[
            batch_index[s][:, None, None, None, None, None],
            torch.arange(channels, device=rois.device)[None, :, None, None, None, None],
            rows[s][:, None, :, None, :, None],
            cols[s][:, None, None, :, None, :],
        ]
        ok = row_ok[s][:, None, :, None, :, None] & col_ok[s][:, None, None, :, None, :]
        vals = vals.masked_fill(~ok, -math.inf)
        # (r, C, ph, pw, kh, kw) -> (r, C, ph, pw, kh*kw): a bin's cells in row-major order. max()
        # takes the first of tied maxima and its backward routes the gradient to that one cell,
        # as torchvision's argmax does; amax() split it among the ties (found by the torchvision
        # reference suite on quantized features).
        pooled = vals.flatten(start_dim=4).max(dim=4).values
        out[s] = torch.where(torch.isinf(pooled) & (pooled < 0), torch.zeros_like(pooled), pooled)
    return out


def roi_warp(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """The Mask R-CNN paper's RoIWarp (from MNC, Dai et al. 2016): the box is quantized as in
    RoIPool, then its bins are sampled bilinearly and averaged as in RoIAlign. It isolates what
    the paper's Table 2c measures: the quantization of the box, not the max over cells.

    Box corners are scaled to the feature map and rounded half away from zero (RoIPool's
    rounding), then `roi_align` (aligned=False: cell i sits at coordinate i, a box at least 1x1
    cell) samples the quantized box [round(x1 s), round(x2 s)]. `aligned` is ignored: once the
    corners are on whole cells there is no half-pixel offset left to choose. The gradient
    flows to the features (as RoIAlign's); the rounding passes none to the boxes.
    features (N, C, H, W); rois (R, 5) -> (R, C, ph, pw)."""
    # corners in at least float32, as roi_align's sampling (bfloat16 cannot hold cell 257)
    rois = rois.to(torch.promote_types(features.dtype, torch.float32))
    corners = _round_half_away(rois[:, 1:] * spatial_scale).to(rois.dtype)
    quantized = torch.cat([rois[:, :1], corners], dim=1)
    return roi_align(features, quantized, output_size, 1.0, sampling_ratio, False)
